"""Module 6 for real: Redis, two vLLM servers behind LiteLLM, Open WebUI in headless Chromium, failover.

One stack serves the whole module (starting it costs two model loads); the failover tests kill backends, so
they run last. The same gateway against fake backends (fast) is in ``test_gateway_fakes.py``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from vllm_workshop import LabError, lab_settings
from vllm_workshop.gateway import LAB_USER_EMAIL, GatewayStack, ensure_keys, read_request_log, webui_server
from vllm_workshop.gateway_lessons import (
    all_backends_down,
    cache_hit,
    client_for,
    failover,
    refused,
    routing,
    stream_failover,
    webui_chat,
)

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack():
    with GatewayStack(lab_settings(), with_webui=True) as running:
        yield running


def test_models_are_listed_through_the_gateway(stack: GatewayStack) -> None:
    ids = {m.id for m in client_for(stack).models.list().data}
    assert {"lab-model", "lab-model-fallback"} <= ids


def test_requests_are_spread_over_both_backends(stack: GatewayStack) -> None:
    counts = routing(stack, requests=12)
    assert sum(counts.values()) == 12
    assert counts["vllm-a"] > 0 and counts["vllm-b"] > 0, counts


def test_identical_request_is_a_cache_hit(stack: GatewayStack) -> None:
    result = cache_hit(stack)
    assert result.answers[0] == result.answers[1] and result.answers[0].strip()
    assert result.cache_hits == (False, True)
    assert result.seconds[1] < result.seconds[0]


def test_wrong_key_is_refused(stack: GatewayStack) -> None:
    (outcome,) = refused(stack, None, 1, api_key="sk-not-a-lab-key")
    assert outcome.startswith("401") and "Invalid API key" in outcome


def test_rate_limit_per_key(stack: GatewayStack) -> None:
    stack.rotate_key("ratelimited")  # the counters live in Redis: a fresh key has none
    outcomes = refused(stack, "ratelimited", 5)  # 3 requests per minute
    assert outcomes[:3] == ["ok"] * 3
    assert all(o.startswith("429") for o in outcomes[3:]), outcomes


def test_budget_per_key(stack: GatewayStack) -> None:
    stack.rotate_key("budgeted")  # spend lives in Redis: a fresh key has spent nothing
    outcomes = refused(stack, "budgeted", 8)  # $0.0001 at lab prices: a few requests
    assert outcomes[0] == "ok"
    assert outcomes[-1].startswith("429") and "Budget exceeded" in outcomes[-1], outcomes


def test_request_log_records_tokens_cost_and_latency(stack: GatewayStack) -> None:
    start = time.time()  # the log persists across runs: look only at what this test sent
    refused(stack, "learner", 1)
    time.sleep(0.5)
    records = [
        r
        for r in read_request_log()
        if r["time"] >= start and r["status"] == "success" and not r["cache_hit"]
    ]
    assert len(records) == 1, records
    last = records[-1]
    assert last["prompt_tokens"] > 0 and last["completion_tokens"] > 0
    assert last["cost"] > 0 and last["latency_s"] > 0 and last["key_alias"]


def test_open_webui_chat_in_a_real_browser(stack: GatewayStack) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    assert stack.webui is not None
    ARTIFACTS.mkdir(exist_ok=True)
    sent_at = time.time()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        try:
            page.goto(stack.webui.base_url + "/auth", wait_until="networkidle")
            page.locator('input[type="email"]').fill(LAB_USER_EMAIL)
            page.locator('input[type="password"]').fill(ensure_keys()["webui_password"])
            page.locator('button[type="submit"]').click()
            chat_input = page.locator("#chat-input")
            expect(chat_input).to_be_visible(timeout=60_000)
            whats_new = page.get_by_role("button", name="Okay, Let's Go!")  # release notes on first login
            try:
                whats_new.wait_for(state="visible", timeout=5_000)
                whats_new.click()
            except PlaywrightTimeout:
                pass
            picker = page.get_by_role("button", name="Select a model")
            if picker.count():  # no default model: pick the gateway's model group like a user would
                picker.first.click()
                page.get_by_text("lab-model", exact=True).first.click()
            chat_input.click()
            page.keyboard.type("What is the capital of France?")
            page.keyboard.press("Enter")
            answer = page.locator("#response-content-container").last
            expect(answer).to_contain_text("Paris", timeout=180_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(ARTIFACTS / "openwebui-chat.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "openwebui-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    served = [r for r in read_request_log() if r["time"] >= sent_at and r["status"] == "success"]
    assert any(r["key_alias"] == "webui" and r["model_group"] == "lab-model" for r in served), served
    assert (ARTIFACTS / "openwebui-chat.png").stat().st_size > 10_000


def test_webui_port_in_use_is_a_clear_error(stack: GatewayStack) -> None:
    assert stack.webui is not None
    with pytest.raises(LabError, match="already in use"):
        webui_server(stack.gateway.base_url, port=stack.webui.port).start()


def test_no_request_lost_when_a_backend_dies(stack: GatewayStack) -> None:
    result = failover(stack, requests=16, kill_after=4)
    assert result.kill_happened and not stack.backends[0].running
    assert result.errors == [] and result.succeeded == result.sent
    after = result.served_by(after_kill=True)
    # every request sent once A was dead was answered by the survivor, and there were such requests
    assert result.started_after_kill >= 8 and sum(after.values()) == result.started_after_kill
    assert set(after) <= {"vllm-b", "vllm-b-fallback"}, after
    assert "vllm-a" in result.served_by(after_kill=False), (
        "A served nothing before the kill: no failover shown"
    )


def test_streams_cut_by_a_dying_backend_recover_with_the_clients_retry(stack: GatewayStack) -> None:
    crashed = stack.backends[0]  # killed by the failover test
    crashed_log = crashed.log_path.read_text()
    stack.restart_backend(0)
    log = crashed.log_path.read_text()
    assert log.startswith(crashed_log) and "restarted at" in log[len(crashed_log) :], "the crash log was lost"
    result = stream_failover(stack, streams=6, kill_after=3, concurrency=3, max_tokens=32)
    assert result.killed, "the run never reached the kill"
    assert result.cut_without_retry >= 1 and result.cut_reasons()["error event"] >= 1, result.cut_reasons()
    assert result.recovered_with_retry == result.cut_without_retry and result.lost == 0


def test_all_backends_down_is_a_clear_error(stack: GatewayStack) -> None:
    outcomes = all_backends_down(stack, attempts=3)
    for outcome in outcomes:
        assert outcome.startswith("503: The backends of model group 'lab-model' are unavailable"), outcome
        assert "not your key's rate limit or budget" in outcome
    assert stack.webui is not None
    status, shown = webui_chat(stack.webui.base_url)  # what Open WebUI shows its user
    assert status == 503 and "are unavailable" in shown, (status, shown)
