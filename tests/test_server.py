"""Server lifecycle: readiness on /health, clean stop, clear errors for a busy port or a dying server."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from vllm_workshop import PortInUseError, ServerStartError
from vllm_workshop.server import ManagedServer, VllmServer, free_port, port_in_use
from vllm_workshop.settings import VLLM_DEFAULT_BINDING, cpu_binding

HEALTHY = """
import http.server, sys, time
time.sleep(float(sys.argv[2]))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def toy(port: int, tmp_path: Path, delay: float = 0.5, script: str = HEALTHY) -> ManagedServer:
    return ManagedServer(
        [sys.executable, "-c", script, str(port), str(delay)], name="toy", port=port, log_dir=tmp_path
    )


@pytest.fixture()
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_free_port_is_free() -> None:
    assert not port_in_use(free_port())


def test_busy_port_is_detected(busy_port: int) -> None:
    assert port_in_use(busy_port)


def test_start_waits_for_health_and_stop_frees_the_port(tmp_path: Path, capsys) -> None:
    port = free_port()
    with toy(port, tmp_path, delay=1.0) as server:
        assert server.running
        said = capsys.readouterr().out.splitlines()  # a line when it starts (with its log), one when ready
        assert said[0] == f"starting toy on port {port} (its log: {server.log_path}) ..."
        assert said[1].startswith("toy ready after ")
        assert requests.get(server.base_url + "/health", timeout=2).status_code == 200
    assert not server.running
    assert server.process is not None and server.process.returncode is not None
    assert not port_in_use(port)


def test_a_server_started_with_sigint_ignored_still_stops_on_sigint(tmp_path: Path) -> None:
    """`make test &` or nohup starts with SIGINT ignored; the server must not inherit that (stop() would wait
    its whole SIGINT timeout, then fall back to SIGTERM)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        server = toy(free_port(), tmp_path).start()
    finally:
        signal.signal(signal.SIGINT, previous)
    started = time.monotonic()
    code = server.stop(timeout=20)
    assert time.monotonic() - started < 10, "SIGINT was ignored: stop() waited for its timeout"
    assert code is not None and code != -signal.SIGTERM


def test_port_in_use_is_refused_before_starting(tmp_path: Path, busy_port: int) -> None:
    server = toy(busy_port, tmp_path)
    with pytest.raises(PortInUseError, match=f"Port {busy_port}.*already in use"):
        server.start()
    assert server.process is None


def test_dying_server_reports_its_log(tmp_path: Path) -> None:
    script = "import sys; print('model weights not found: /x'); sys.exit(3)"
    server = toy(free_port(), tmp_path, script=script)
    with pytest.raises(ServerStartError, match="code 3(.|\n)*model weights not found"):
        server.start(timeout=30)


def test_never_healthy_server_is_killed(tmp_path: Path) -> None:
    script = "import time; print('still loading', flush=True); time.sleep(600)"
    server = toy(free_port(), tmp_path, script=script)
    with pytest.raises(ServerStartError, match="not healthy(.|\n)*still loading"):
        server.start(timeout=2)
    assert not server.running


def test_vllm_command_is_built_from_the_settings(settings) -> None:
    server = VllmServer(settings, max_num_seqs=4)
    assert server.command[1:4] == ["-m", "vllm_workshop.vllm_cli", "serve"]
    assert server.command[server.command.index("--port") + 1] == str(server.port)
    assert server.command[-2:] == ["--max-num-seqs", "4"]
    assert server.openai_base_url.endswith(f":{server.port}/v1")


def test_a_one_rank_cpu_server_runs_its_model_in_the_engine_core_process(settings, monkeypatch) -> None:
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    cpu = replace(settings, device="cpu")
    single = VllmServer(cpu, max_num_seqs=4)
    assert single.env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    for ranked in (
        VllmServer(cpu, tensor_parallel_size=2),
        VllmServer(cpu, pipeline_parallel_size=2),
        VllmServer(cpu, extra_args=["-tp", "2"]),
        VllmServer(cpu, binding=cpu_binding(0, 2)),  # a replica on one core: the model keeps its own process
        VllmServer(cpu, binding=VLLM_DEFAULT_BINDING),
    ):
        assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in ranked.env
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # the learner's choice wins
    assert VllmServer(cpu).env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"


@pytest.mark.slow
def test_vllm_cli_shim_runs_on_this_build() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vllm_workshop.vllm_cli", "--version"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().startswith("0.")


@pytest.mark.slow
def test_vllm_bench_serve_skips_the_rest_of_the_cli() -> None:
    """``vllm bench serve`` parses vLLM's own options for it and never imports the CLI's other commands."""
    code = (
        "import sys\n"
        "sys.argv = ['vllm', 'bench', 'serve', '--help']\n"
        "from vllm_workshop import vllm_cli\n"
        "try:\n    vllm_cli.main()\nexcept SystemExit:\n    pass\n"
        "print('cli main loaded:', 'vllm.entrypoints.cli.main' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for flag in ("--max-concurrency", "--request-rate", "--goodput", "--save-detailed", "--result-filename"):
        assert flag in done.stdout, flag
    assert "cli main loaded: False" in done.stdout


def test_other_vllm_commands_and_the_rust_bench_go_to_vllms_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata
    import types

    from vllm_workshop import vllm_cli

    monkeypatch.setattr(importlib.metadata, "version", importlib.metadata.version)  # main() patches it
    calls: list[list[str]] = []
    fake = types.ModuleType("vllm.entrypoints.cli.main")
    fake.main = lambda: calls.append(sys.argv[1:])  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm.entrypoints.cli.main", fake)
    monkeypatch.setattr(vllm_cli, "bench_serve", lambda argv: calls.append(["fast", *argv]))
    cases = ((["serve", "m"], "0"), (["bench", "serve", "--x"], "1"), (["bench", "serve", "--x"], "0"))
    for argv, rust in cases:
        monkeypatch.setenv("VLLM_USE_RUST_BENCH", rust)
        monkeypatch.setattr(sys, "argv", ["vllm", *argv])
        vllm_cli.main()
    assert calls == [["serve", "m"], ["bench", "serve", "--x"], ["fast", "--x"]]


def test_servers_left_running_are_stopped_when_the_interpreter_exits(tmp_path: Path) -> None:
    """A kernel that exits (shutdown or restart) without stopping its servers leaves no process behind."""
    port = free_port()
    pid_file = tmp_path / "pid"
    script = (
        "import sys; sys.path.insert(0, {src!r}); sys.path.insert(0, {tests!r})\n"
        "from pathlib import Path\n"
        "from test_server import toy\n"
        "server = toy({port}, Path({tmp!r})).start(timeout=30)\n"
        "Path({pid!r}).write_text(str(server.process.pid))\n"
        "del server  # the caller drops its handle; the lab still knows the process\n"
    ).format(
        src=str(Path(__file__).parents[1] / "src"),
        tests=str(Path(__file__).parent),
        port=port,
        tmp=str(tmp_path),
        pid=str(pid_file),
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    pid = int(pid_file.read_text())
    try:
        alive = Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
        assert not alive, f"server pid {pid} outlived the interpreter that started it"
        assert not port_in_use(port)
    finally:
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.killpg(pid, signal.SIGKILL)


def test_restart_on_the_same_port_keeps_the_earlier_log(tmp_path: Path) -> None:
    """A crashed run's log survives a restart; the restart's own error shows only its own output."""
    port = free_port()
    crashed = toy(port, tmp_path, script="import sys; print('CUDA out of memory in run 1'); sys.exit(3)")
    with pytest.raises(ServerStartError, match="out of memory in run 1"):
        crashed.start(timeout=30)
    again = toy(port, tmp_path, script="import sys; print('config error in run 2'); sys.exit(4)")
    with pytest.raises(ServerStartError, match="config error in run 2") as error:
        again.start(timeout=30)
    assert "run 1" not in str(error.value), "the second run's error shows the first run's output"
    log = again.log_path.read_text()
    order = [log.index(text) for text in ("out of memory in run 1", "restarted at", "config error in run 2")]
    assert order == sorted(order), log


def test_ready_check_replaces_the_http_health_check(tmp_path: Path) -> None:
    """A server that speaks no HTTP (Redis) is ready when its ``ready`` callable says so, not before."""
    flag = tmp_path / "ready"
    script = f"import pathlib, time; time.sleep(1); pathlib.Path({str(flag)!r}).touch(); time.sleep(600)"
    server = ManagedServer(
        [sys.executable, "-c", script], name="no-http", port=free_port(), log_dir=tmp_path, ready=flag.exists
    )
    try:
        server.start(timeout=30)
        assert flag.exists() and server.running
    finally:
        server.stop()
    never = ManagedServer(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        name="never",
        port=free_port(),
        log_dir=tmp_path,
        ready=lambda: False,
    )
    with pytest.raises(ServerStartError, match="not healthy at 127.0.0.1:"):
        never.start(timeout=2)
    assert not never.running
