"""Redis, the gateway's store: the lab's key registry and per-key spend, LiteLLM's rate limits and cache.

The lab runs Debian's ``redis-server`` like its other servers (a child process, log in ``.lab/logs``),
with its data and append-only file in ``.lab/redis``: spend, revocations and rate-limit windows survive a
restart of the proxy and of Redis itself, and every proxy pointed at the same Redis shares them. A second
stack started while one runs reuses that Redis instead of starting another on the same files.

Layout (the proxy side is :mod:`vllm_workshop.gateway_hooks`):

- ``lab:keys``: hash, sha256 of a key -> JSON ``{"alias", "rpm_limit", "max_budget", "models"}`` (key values
  are never stored, only their hashes, as LiteLLM does with its virtual keys)
- ``lab:spend``: hash, sha256 of a key -> dollars spent at the lab prices
- ``lab:revoked``: set of the sha256 of revoked keys

The lab side speaks the few commands it needs over a socket (RESP, the Redis protocol), so the lab's
environment needs no Redis client library; the proxy uses redis-py, which LiteLLM installs. Every call has a
timeout: a Redis that is down or hangs gives a :class:`StoreError`, never a hang.

This module imports only the standard library and the workshop's errors and paths: the proxy imports it too.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from vllm_workshop.errors import LabError

KEYS = "lab:keys"
SPEND = "lab:spend"
REVOKED = "lab:revoked"
TIMEOUT_S = 2.0
URL_FILE = "redis.url"  # in the data folder: where the Redis that owns these files listens


class StoreError(LabError):
    """The gateway's Redis is misconfigured, unreachable, or refused a command."""


def key_hash(key: str) -> str:
    """sha256 hex of an API key: how the store (and LiteLLM) names a key without keeping its value."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class RedisAddress:
    """Where a Redis listens: ``redis://[:password@]host:port[/db]``."""

    host: str
    port: int
    db: int = 0
    password: str | None = None

    @property
    def url(self) -> str:
        """The URL, with the password masked (safe to print)."""
        auth = ":***@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/{self.db}"

    @property
    def secret_url(self) -> str:
        """The URL with the password, for the processes that connect."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """A :class:`RedisAddress` from ``redis://host:port[/db]``; :class:`StoreError` naming what is wrong."""
    example = "redis://127.0.0.1:6379/0"
    parts = urlsplit(url.strip())
    if parts.scheme != "redis":
        raise StoreError(
            f"{url!r} is not a Redis URL (scheme {parts.scheme or 'missing'!r}). Use e.g. {example}"
        )
    try:
        port = parts.port
    except ValueError:
        raise StoreError(f"{url!r} has no valid port. Use e.g. {example}") from None
    if not parts.hostname or port is None:
        raise StoreError(f"{url!r} names no host and port. Use e.g. {example}")
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise StoreError(f"{url!r}: the database must be a number after the port, e.g. {example}")
    return RedisAddress(parts.hostname, port, int(db), unquote(parts.password) if parts.password else None)


def _encode(args: Sequence[object]) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _ReplyError(Exception):
    """An error reply (``-ERR ...``) to one command."""


def _read(stream: IO[bytes]) -> Any:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return _ReplyError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else stream.read(size + 2)[:-2].decode()
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [_read(stream) for _ in range(size)]
    raise ConnectionError(f"not a Redis reply: {line[:40]!r}")


def pipeline(
    address: RedisAddress, commands: Sequence[Sequence[object]], timeout: float = TIMEOUT_S
) -> list[Any]:
    """Send commands on one connection and return their replies; :class:`StoreError` on any failure."""
    preamble: list[Sequence[object]] = []
    if address.password:
        preamble.append(("AUTH", address.password))
    if address.db:
        preamble.append(("SELECT", address.db))
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout) as sock:
            sock.sendall(b"".join(_encode(c) for c in [*preamble, *commands]))
            with sock.makefile("rb") as stream:
                replies = [_read(stream) for _ in range(len(preamble) + len(commands))]
    except OSError as exc:  # refused, timed out, reset, closed
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise StoreError(
            f"Redis at {address.url} is not reachable ({reason}). Fix: start it (the gateway stack starts "
            "one; `make redis` installs redis-server) or correct LAB_REDIS_URL."
        ) from None
    for command, reply in zip([*preamble, *commands], replies, strict=True):
        if isinstance(reply, _ReplyError):
            raise StoreError(f"Redis at {address.url} refused {command[0]}: {reply}")
    return replies[len(preamble) :]


def command(address: RedisAddress, *args: object, timeout: float = TIMEOUT_S) -> Any:
    """One Redis command's reply."""
    return pipeline(address, [args], timeout)[0]


def ping(address: RedisAddress, timeout: float = 0.5) -> bool:
    """True when a Redis answers PING at the address."""
    try:
        return command(address, "PING", timeout=timeout) == "PONG"
    except StoreError:
        return False


def redis_executable() -> str:
    """Path of Debian's ``redis-server``, or an error that says how to install it."""
    found = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin")
    if not found:
        raise StoreError(
            "redis-server is not installed. Fix: run `make redis` (Debian's redis-server package), "
            "or point LAB_REDIS_URL at a Redis you run."
        )
    return found


def redis_server(data_dir: Path, port: int | None = None) -> Any:
    """A :class:`~vllm_workshop.server.ManagedServer` for ``redis-server`` on 127.0.0.1, append-only in
    ``data_dir``; ready when it answers PING."""
    from vllm_workshop.server import LOCALHOST, ManagedServer, free_port

    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    address = RedisAddress(LOCALHOST, port)
    command_line = [
        redis_executable(),
        "--port",
        str(port),
        "--bind",
        LOCALHOST,
        "--dir",
        str(data_dir.resolve()),
        "--appendonly",
        "yes",  # every write goes to the append-only file (fsync each second)
        "--save",
        "",  # no RDB snapshots besides it
        "--daemonize",
        "no",
    ]
    logs = data_dir.parent / "logs"  # .lab/logs beside .lab/redis, like every lab server's log
    return ManagedServer(command_line, name="redis", port=port, log_dir=logs, ready=lambda: ping(address))


def running_store(data_dir: Path) -> RedisAddress | None:
    """The Redis that serves ``data_dir`` now (started by another stack), or None."""
    marker = data_dir / URL_FILE
    if not marker.exists():
        return None
    try:
        address = parse_redis_url(marker.read_text())
        served = command(address, "CONFIG", "GET", "dir", timeout=0.5)
    except (StoreError, OSError):
        return None
    return address if served and Path(served[1]) == data_dir.resolve() else None


def start_store(data_dir: Path, port: int | None = None, timeout: float = 30) -> tuple[RedisAddress, Any]:
    """Reuse the Redis that serves ``data_dir``, else start one: ``(address, server or None when reused)``."""
    found = running_store(data_dir)
    if found is not None:
        return found, None
    server = redis_server(data_dir, port)
    server.start(timeout)
    address = RedisAddress(server.host, server.port)
    (data_dir / URL_FILE).write_text(address.url + "\n")
    return address, server


def connect(url: str, timeout: float = TIMEOUT_S) -> RedisAddress:
    """An external Redis (``LAB_REDIS_URL``), checked with PING: a clear error now, not at a request."""
    address = parse_redis_url(url)
    reply = command(address, "PING", timeout=timeout)
    if reply != "PONG":
        raise StoreError(f"{address.url} answered PING with {reply!r}: is it a Redis?")
    return address


@dataclass(frozen=True)
class KeyStore:
    """The lab's keys, spend and revocations in one Redis."""

    address: RedisAddress

    def sync(self, entries: Iterable[dict[str, Any]]) -> None:
        """Make the registry hold exactly these keys (limits as given); spend and revocations of keys that
        are gone are dropped, those of the rest kept."""
        records = {
            key_hash(e["key"]): json.dumps(
                {k: e.get(k) for k in ("alias", "rpm_limit", "max_budget", "models")}, sort_keys=True
            )
            for e in entries
        }
        stale = sorted(set(command(self.address, "HKEYS", KEYS) or []) - set(records))
        steps: list[Sequence[object]] = [("MULTI",), ("DEL", KEYS)]
        steps.append(("HSET", KEYS, *[part for item in records.items() for part in item]))
        if stale:
            steps += [("HDEL", SPEND, *stale), ("SREM", REVOKED, *stale)]
        pipeline(self.address, [*steps, ("EXEC",)])

    def revoke(self, key: str) -> None:
        """Refuse this key from now on, on every proxy using this Redis."""
        if not command(self.address, "HEXISTS", KEYS, key_hash(key)):
            raise StoreError("that key is not registered in the store, so there is nothing to revoke")
        command(self.address, "SADD", REVOKED, key_hash(key))

    def spend(self) -> dict[str, float]:
        """Dollars spent per key alias (registered keys only)."""
        keys, spent = pipeline(self.address, [("HGETALL", KEYS), ("HGETALL", SPEND)])
        aliases = {h: json.loads(r)["alias"] for h, r in zip(keys[::2], keys[1::2], strict=True)}
        return {aliases[h]: float(v) for h, v in zip(spent[::2], spent[1::2], strict=True) if h in aliases}
