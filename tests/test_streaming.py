"""The client-side remedy for cut streams, against a fake OpenAI server that cuts, drops and refuses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_openai import fake_backend
from openai import APIStatusError, OpenAI

from vllm_workshop.server import free_port
from vllm_workshop.streaming import stream_once, stream_with_retry


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAI]:
    server = fake_backend(free_port(), 0.01, Path(tmp_path_factory.mktemp("fake")))
    with server:
        yield OpenAI(base_url=server.base_url + "/v1", api_key="sk-test", max_retries=0, timeout=10)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_a_complete_stream_finishes_in_one_attempt(client: OpenAI) -> None:
    result = stream_with_retry(client, ask("complete"), max_tokens=5)
    assert [a.finish_reason for a in result.attempts] == ["length"]
    assert result.finished and not result.cut and result.text == "w0 w1 w2 w3 w4 "


def test_a_dropped_connection_is_a_cut_and_the_retry_completes_it(client: OpenAI) -> None:
    result = stream_with_retry(client, ask("[drop] one"), max_tokens=5, backoff_s=0.01)
    first, second = result.attempts
    assert first.cut.startswith("connection dropped") and first.text == "w0 w1 " and not first.finished
    assert second.finished and result.recovered and result.text == "w0 w1 w2 w3 w4 "


def test_a_stream_that_ends_without_finish_reason_is_a_cut(client: OpenAI) -> None:
    attempt = stream_once(client, ask("[early] two"), max_tokens=5)
    assert attempt.cut == "the stream ended without a finish_reason" and attempt.text == "w0 w1 "
    assert stream_with_retry(client, ask("[early] three"), max_tokens=5, backoff_s=0.01).recovered


def test_without_retries_the_cut_answer_is_lost(client: OpenAI) -> None:
    result = stream_with_retry(client, ask("[drop] four"), max_tokens=5, retries=0)
    assert result.cut and not result.finished and len(result.attempts) == 1


def test_a_503_before_the_stream_is_retried(client: OpenAI) -> None:
    result = stream_with_retry(client, ask("[busy] five"), max_tokens=3, backoff_s=0.01)
    assert result.attempts[0].cut == "HTTP 503 before the stream started" and result.recovered


def test_a_refused_key_is_raised_not_retried(client: OpenAI) -> None:
    refused = client.with_options(api_key="sk-refused")
    with pytest.raises(APIStatusError) as error:
        stream_with_retry(refused, ask("six"), max_tokens=3, backoff_s=0.01)
    assert error.value.status_code == 401


def test_retries_stop_at_the_limit(tmp_path: Path) -> None:
    server = fake_backend(free_port(), 0.01, tmp_path)
    with server:
        client = OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=10)
    result = stream_with_retry(client, ask("the server is gone"), max_tokens=3, retries=2, backoff_s=0.01)
    assert len(result.attempts) == 3 and not result.finished
    assert all(a.cut.startswith("no connection to the gateway") for a in result.attempts)
