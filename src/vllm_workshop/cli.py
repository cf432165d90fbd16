"""Command line for the Makefile and terminal cells: ``python -m vllm_workshop <command>``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vllm_workshop.errors import LabError


def _model(args: argparse.Namespace) -> None:
    from vllm_workshop.model import prepare_lab_model

    prepare_lab_model(force=args.force)


def _settings(_: argparse.Namespace) -> None:
    from vllm_workshop.settings import lab_settings

    print(lab_settings().describe())


def _k8s(args: argparse.Namespace) -> None:
    from vllm_workshop import k8s, policy

    if args.action == "render":
        print(k8s.render(args.overlay), end="")
        return
    if args.action == "validate":
        names = [args.overlay] if args.overlay else [p.name for p in k8s.all_overlays()]
        failed = False
        for name in names:
            objects = k8s.load_objects(k8s.render(name))
            report = k8s.validate_objects(name, objects)
            violations = {title: found for title, found in policy.check_all(objects).items() if found}
            print(report.summary())
            for title, found in violations.items():
                print(f"  policy '{title}': " + "; ".join(found))
            failed |= not report.ok or bool(violations)
        if failed:
            raise LabError("validation failed (see above)")
        print(f"all overlays valid against Kubernetes {k8s.KUBERNETES_VERSION} and pass the policy checks")
        return
    if args.action == "deploy":
        print(k8s.deploy(_need(args.overlay)))
    elif args.action == "undeploy":
        print(k8s.undeploy(_need(args.overlay)))


def _need(overlay: str | None) -> str:
    if not overlay:
        raise LabError("name an overlay: OVERLAY=<name> (see modules/*/overlays/)")
    return overlay


def _preflight(args: argparse.Namespace) -> None:
    from vllm_workshop.preflight import run_preflight

    checks = run_preflight(args.accelerator)
    for check in checks:
        print(check)
    if not all(check.ok for check in checks):
        raise LabError("preflight failed: fix the items marked FAIL")


def _tools(_: argparse.Namespace) -> None:
    from vllm_workshop.kubetools import client_version, find_helm, find_kubectl

    kubectl = find_kubectl()
    print(f"kubectl: {kubectl} {client_version(kubectl)}")
    print(f"helm:    {find_helm()}")


def _gateway(args: argparse.Namespace) -> None:
    import time

    from vllm_workshop.gateway import LAB_USER_EMAIL, GatewayStack, ensure_keys, gateway_dir
    from vllm_workshop.settings import lab_settings

    print(
        "starting two vLLM servers, the LiteLLM gateway" + (" and Open WebUI" if args.webui else ""),
        flush=True,
    )
    with GatewayStack(
        lab_settings(), with_webui=args.webui, gateway_port=args.port, webui_port=args.webui_port
    ) as stack:
        keys = ensure_keys()
        print(f"gateway   : {stack.openai_base_url}  (model group 'lab-model')")
        for backend in stack.backends:
            print(f"backend   : {backend.openai_base_url}")
        if stack.webui:
            print(
                f"Open WebUI: {stack.webui.base_url}  user {LAB_USER_EMAIL} password {keys['webui_password']}"
            )
        print(f"keys      : {gateway_dir() / 'keys.json'}   request log: {gateway_dir() / 'requests.jsonl'}")
        print("Ctrl-C stops everything.", flush=True)
        try:
            while all(server.running for server in [stack.gateway, *stack.backends]):
                time.sleep(1)
            print("a process exited; stopping the stack (logs in .lab/gateway and .lab/logs)")
        except KeyboardInterrupt:
            print("stopping ...")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per task."""
    parser = argparse.ArgumentParser(prog="python -m vllm_workshop", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    model = commands.add_parser("model", help="build the lab model folder once (make model)")
    model.add_argument("--force", action="store_true", help="rebuild even if the marker says it is ready")
    model.set_defaults(func=_model)
    settings = commands.add_parser("settings", help="print the lane settings read from the environment")
    settings.set_defaults(func=_settings)
    k8s = commands.add_parser("k8s", help="render, validate, deploy or undeploy a Kustomize overlay")
    k8s.add_argument("action", choices=["render", "validate", "deploy", "undeploy"])
    k8s.add_argument("overlay", nargs="?", help="overlay name or folder (validate: all when omitted)")
    k8s.set_defaults(func=_k8s)
    preflight = commands.add_parser("preflight", help="check kubectl, context, nodes and device plugins")
    preflight.add_argument("--accelerator", choices=["cpu", "nvidia", "neuron"], default="cpu")
    preflight.set_defaults(func=_preflight)
    gateway = commands.add_parser(
        "gateway", help="two vLLM servers behind LiteLLM (and Open WebUI), foreground"
    )
    gateway.add_argument("--webui", action="store_true", help="also start Open WebUI")
    gateway.add_argument("--port", type=int, default=None, help="gateway port (default: a free one)")
    gateway.add_argument("--webui-port", type=int, default=None, help="Open WebUI port (default: a free one)")
    gateway.set_defaults(func=_gateway)
    tools = commands.add_parser("tools", help="find or install kubectl and helm (tools/bin)")
    tools.set_defaults(func=_tools)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; workshop errors print their fix and exit 2 instead of a traceback."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
