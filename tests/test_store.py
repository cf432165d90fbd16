"""The gateway's Redis store: URLs, a redis-server started as the lab starts it, persistence, errors."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vllm_workshop import store
from vllm_workshop.store import KeyStore, RedisAddress, StoreError, parse_redis_url, start_store

KEYS = [
    {"alias": "admin", "key": "sk-master-1", "rpm_limit": None, "max_budget": None, "models": None},
    {"alias": "budgeted", "key": "sk-bud-1", "rpm_limit": None, "max_budget": 1e-4, "models": None},
    {"alias": "webui", "key": "sk-webui-1", "rpm_limit": 600, "max_budget": 5.0, "models": ["lab-model"]},
]


@pytest.fixture()
def redis(tmp_path: Path) -> Iterator[tuple[RedisAddress, Path]]:
    """A redis-server of the lab's own kind, with its files in a temporary folder."""
    address, server = start_store(tmp_path / "redis")
    assert server is not None
    yield address, tmp_path / "redis"
    server.stop()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6390", RedisAddress("127.0.0.1", 6390)),
        ("redis://localhost:6379/2", RedisAddress("localhost", 6379, 2)),
        ("redis://:s%40cret@redis:6379/0", RedisAddress("redis", 6379, 0, "s@cret")),
    ],
)
def test_redis_urls_are_parsed(url: str, expected: RedisAddress) -> None:
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://127.0.0.1:6379", "not a Redis URL"),
        ("127.0.0.1:6379", "not a Redis URL"),
        ("redis://127.0.0.1", "names no host and port"),
        ("redis://127.0.0.1:sixty", "no valid port"),
        ("redis://127.0.0.1:6379/cache", "database must be a number"),
    ],
)
def test_a_wrong_redis_url_is_a_clear_error(url: str, complaint: str) -> None:
    with pytest.raises(StoreError, match=complaint):
        parse_redis_url(url)


def test_the_password_never_shows_in_the_printable_url() -> None:
    address = parse_redis_url("redis://:hunter2@redis:6379/0")
    assert "hunter2" not in address.url and "hunter2" in address.secret_url


def test_redis_down_is_a_clear_error_quickly() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        started = time.monotonic()
        with pytest.raises(StoreError, match=f"Redis at redis://127.0.0.1:{port}/0 is not reachable"):
            store.connect(f"redis://127.0.0.1:{port}")
    assert time.monotonic() - started < 2


def test_a_redis_that_never_answers_times_out_instead_of_hanging() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()  # accepts, never replies
        port = sock.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(StoreError, match="not reachable .*timed out"):
            store.command(RedisAddress("127.0.0.1", port), "PING", timeout=0.5)
    assert time.monotonic() - started < 2


def test_something_that_is_not_redis_is_named(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        import threading

        def answer_http() -> None:
            conn, _ = sock.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer_http, daemon=True).start()
        with pytest.raises(StoreError, match="not reachable .*not a Redis reply"):
            store.connect(f"redis://127.0.0.1:{port}")


def test_missing_redis_server_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store.shutil, "which", lambda *a, **k: None)
    with pytest.raises(StoreError, match="make redis"):
        store.redis_executable()


def test_spend_and_revocations_survive_a_redis_restart(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    address, server = start_store(data)
    keys = KeyStore(address)
    keys.sync(KEYS)
    store.command(address, "HINCRBYFLOAT", store.SPEND, store.key_hash("sk-bud-1"), "0.00025")
    keys.revoke("sk-webui-1")
    server.stop()
    assert not store.ping(address)
    address, server = start_store(data)  # a new port, the same files: the append-only file is replayed
    try:
        assert KeyStore(address).spend() == {"budgeted": 0.00025}
        assert store.command(address, "SISMEMBER", store.REVOKED, store.key_hash("sk-webui-1")) == 1
        assert (data / "appendonlydir").is_dir()
    finally:
        server.stop()


def test_a_second_stack_reuses_the_running_redis(redis: tuple[RedisAddress, Path]) -> None:
    address, data = redis
    again, server = start_store(data)
    assert server is None and again == address


def test_sync_keeps_spend_of_kept_keys_and_drops_that_of_rotated_ones(
    redis: tuple[RedisAddress, Path],
) -> None:
    address, _ = redis
    keys = KeyStore(address)
    keys.sync(KEYS)
    for key in ("sk-master-1", "sk-bud-1"):
        store.command(address, "HINCRBYFLOAT", store.SPEND, store.key_hash(key), "0.5")
    keys.revoke("sk-bud-1")
    rotated = [KEYS[0], {**KEYS[1], "key": "sk-bud-2"}, KEYS[2]]
    keys.sync(rotated)
    assert keys.spend() == {"admin": 0.5}
    assert store.command(address, "SMEMBERS", store.REVOKED) == []
    assert store.command(address, "HLEN", store.KEYS) == 3
    record = store.command(address, "HGET", store.KEYS, store.key_hash("sk-webui-1"))
    assert '"models": ["lab-model"]' in record and "sk-webui-1" not in record  # only the hash is stored


def test_revoking_an_unknown_key_is_refused(redis: tuple[RedisAddress, Path]) -> None:
    keys = KeyStore(redis[0])
    keys.sync(KEYS)
    with pytest.raises(StoreError, match="not registered"):
        keys.revoke("sk-nobody")
