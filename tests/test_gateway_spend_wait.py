"""refused() waits for each answer's spend to be recorded before the next request (no gateway needed)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from vllm_workshop import gateway_lessons
from vllm_workshop.errors import LabError


class FakeStack:
    """Spend that the 'proxy' records 0.3 s after each answer; or a store that is down."""

    openai_base_url = "http://127.0.0.1:9/v1"

    def __init__(self, down: bool = False) -> None:
        self.down, self.spent, self.seen_before_ask = down, 0.0, []

    def spend(self) -> dict[str, float]:
        if self.down:
            raise LabError("Redis at redis://127.0.0.1:1 is unreachable")
        return {"budgeted": self.spent}

    def answered(self) -> None:
        threading.Timer(0.3, lambda: setattr(self, "spent", self.spent + 1.0)).start()


def test_each_request_sees_the_previous_answers_spend(monkeypatch: pytest.MonkeyPatch) -> None:
    stack = FakeStack()
    monkeypatch.setattr(gateway_lessons, "key_for", lambda alias: "sk-test")

    def ask(client, text, max_tokens, model):
        stack.seen_before_ask.append(stack.spent)
        stack.answered()
        return "ok"

    monkeypatch.setattr(gateway_lessons, "ask", ask)
    assert gateway_lessons.refused(stack, "budgeted", 3) == ["ok"] * 3
    assert stack.seen_before_ask == [0.0, 1.0, 2.0]  # without the wait: [0.0, 0.0, 0.0]


def test_with_the_store_down_it_does_not_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    stack = FakeStack(down=True)
    monkeypatch.setattr(gateway_lessons, "key_for", lambda alias: "sk-test")
    monkeypatch.setattr(gateway_lessons, "ask", lambda *args: "ok")
    started = time.monotonic()
    assert gateway_lessons.refused(stack, "budgeted", 2) == ["ok", "ok"]
    assert time.monotonic() - started < 2  # no 5 s wait per answer


def test_without_an_alias_nothing_is_awaited(monkeypatch: pytest.MonkeyPatch) -> None:
    stack = SimpleNamespace(openai_base_url="http://127.0.0.1:9/v1", spend=lambda: pytest.fail("spend read"))
    monkeypatch.setattr(gateway_lessons, "ask", lambda *args: "ok")
    assert gateway_lessons.refused(stack, None, 2, api_key="sk-x") == ["ok", "ok"]
