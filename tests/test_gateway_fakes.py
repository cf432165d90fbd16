"""The module 6 gateway for real (Redis, the LiteLLM proxy with the lab's config and hooks) in front of two
small fake OpenAI servers instead of vLLM, so that it runs in seconds: keys, scopes, spend, budgets and rate
limits in Redis across a proxy restart and across two proxies, Redis down, streams cut by a dying backend
and mended by the client's retry, and every backend down.

One stack serves the module; tests that kill a backend start it again before they end.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import ARTIFACTS, launch_chromium
from fake_openai import PROMPT_TOKENS, fake_backend
from openai import APIStatusError, OpenAI

from vllm_workshop import LabError, gateway, lab_settings
from vllm_workshop.gateway import (
    LAB_USER_EMAIL,
    GatewayStack,
    ensure_keys,
    key_for,
    litellm_server,
    openai_url,
    webui_server,
)
from vllm_workshop.gateway_lessons import all_backends_down, refused, stream_failover
from vllm_workshop.server import free_port
from vllm_workshop.store import StoreError

pytestmark = pytest.mark.slow  # real LiteLLM proxies and Redis: about a minute and a half in all

LAB_PRICE = PROMPT_TOKENS * 5e-7 + 8 * 1e-6  # one `refused` request (8 tokens) at the config's lab prices


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    home = Path(tmp_path_factory.mktemp("gateway"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gateway, "gateway_dir", lambda: home)  # keys, request log, proxy logs
        patch.setattr(gateway, "state_dir", lambda: home)  # Open WebUI's data folder
        patch.delenv("LAB_REDIS_URL", raising=False)
        backends = [fake_backend(free_port(), 0.1, home), fake_backend(free_port(), 0.1, home)]
        with GatewayStack(lab_settings(), backends=backends, redis_dir=home / "redis") as running:
            yield running


@pytest.mark.parametrize(
    ("url", "complaint"),
    [("http://127.0.0.1:6379", "not a Redis URL"), ("redis://127.0.0.1:{port}/0", "is not reachable")],
)
def test_a_wrong_redis_url_stops_the_stack_before_anything_starts(
    url: str, complaint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway, "gateway_dir", lambda: tmp_path)
    monkeypatch.setenv("LAB_REDIS_URL", url.format(port=free_port()))
    backends = [fake_backend(free_port(), 0.1, tmp_path), fake_backend(free_port(), 0.1, tmp_path)]
    stack = GatewayStack(lab_settings(), backends=backends)
    with pytest.raises(StoreError, match=complaint):
        stack.start(30)
    assert stack.gateway is None and not any(b.running for b in backends)


def test_an_unknown_key_is_refused(stack: GatewayStack) -> None:
    (outcome,) = refused(stack, None, 1, api_key="sk-not-a-lab-key")
    assert outcome.startswith("401: Invalid API key: not a key of this gateway"), outcome


def test_open_webui_has_its_own_key_scoped_to_the_lab_model(stack: GatewayStack) -> None:
    webui_key = key_for("webui")
    assert webui_key != ensure_keys()["master"]
    assert webui_server(stack.gateway.base_url).env["OPENAI_API_KEY"] == webui_key
    assert refused(stack, "webui", 1) == ["ok"]
    (outcome,) = refused(stack, "webui", 1, model="lab-model-fallback")
    assert outcome == "401: Key 'webui' may only use lab-model, not 'lab-model-fallback'."


def test_open_webui_chat_in_a_real_browser(stack: GatewayStack) -> None:
    """A learner's chat: Chromium -> Open WebUI -> LiteLLM (its webui key) -> a backend, and back."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    webui = webui_server(stack.gateway.base_url).start(300)
    ARTIFACTS.mkdir(exist_ok=True)
    sent_at = time.time()
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        try:
            page.goto(webui.base_url + "/auth", wait_until="networkidle")
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
            page.keyboard.type("What is the capital of France?")  # the fakes answer w0 w1 ...
            page.keyboard.press("Enter")
            answer = page.locator("#response-content-container").last
            expect(answer).to_contain_text("w0 w1 w2", timeout=120_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(ARTIFACTS / "openwebui-chat.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "openwebui-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    with pytest.raises(LabError, match="already in use"):  # a second Open WebUI on its port
        webui_server(stack.gateway.base_url, port=webui.port).start()
    webui.stop()
    served = [r for r in gateway.read_request_log() if r["time"] >= sent_at and r["status"] == "success"]
    assert any(r["key_alias"] == "webui" and r["model_group"] == "lab-model" for r in served), served
    assert (ARTIFACTS / "openwebui-chat.png").stat().st_size > 10_000


def test_spend_budget_and_rate_limit_survive_a_proxy_restart(stack: GatewayStack) -> None:
    stack.rotate_key("ratelimited")  # fresh keys: no spend, no rate-limit window yet
    stack.rotate_key("budgeted")
    assert refused(stack, "ratelimited", 4)[3].startswith("429: Rate limit exceeded")
    budget = refused(stack, "budgeted", 3)  # $0.0001: two requests of $0.000058
    assert budget[:2] == ["ok", "ok"] and budget[2].startswith("429: Budget exceeded for key 'budgeted'")
    spent = stack.spend()
    assert spent["budgeted"] == pytest.approx(2 * LAB_PRICE)
    stack.restart_gateway()
    assert stack.spend() == spent
    (limited,) = refused(stack, "ratelimited", 1)
    assert limited.startswith("429: Rate limit exceeded"), "the rate-limit window was forgotten"
    (over,) = refused(stack, "budgeted", 1)
    assert over == budget[2], "the budget was forgotten by the restart"


def test_a_revoked_key_is_refused_at_once(stack: GatewayStack) -> None:
    key = stack.rotate_key("budgeted")
    assert refused(stack, None, 1, api_key=key) == ["ok"]
    stack.revoke_key("budgeted")
    assert refused(stack, None, 1, api_key=key) == [
        "401: API key 'budgeted' has been revoked. Ask for a new key."
    ]


def test_two_proxies_on_one_redis_enforce_one_limit(stack: GatewayStack) -> None:
    stack.rotate_key("ratelimited")
    other = litellm_server([openai_url(b) for b in stack.backends], stack.store_address)
    with other:
        second = OpenAI(
            base_url=other.base_url + "/v1", api_key=key_for("ratelimited"), max_retries=0, timeout=30
        )
        assert refused(stack, "ratelimited", 2) == ["ok", "ok"]
        messages = [{"role": "user", "content": f"third {time.time()}"}]
        second.chat.completions.create(model="lab-model", messages=messages, max_tokens=8)
        with pytest.raises(APIStatusError) as error:  # the 4th request of the minute, wherever it goes
            second.chat.completions.create(model="lab-model", messages=messages, max_tokens=9)
        assert error.value.status_code == 429 and "Rate limit exceeded" in str(error.value)
        assert refused(stack, "ratelimited", 1)[0].startswith("429")


def test_redis_down_refuses_requests_with_a_clear_error(stack: GatewayStack) -> None:
    assert stack.store is not None
    spent = stack.spend()
    stack.store.stop()
    try:
        for alias in ("learner", "admin"):  # the master key has no limits: it must be refused all the same
            started = time.monotonic()
            (outcome,) = refused(stack, alias, 1)
            assert time.monotonic() - started < 15
            assert outcome.startswith("503: The gateway's key store (Redis at redis://127.0.0.1:"), outcome
            assert "unreachable" in outcome and "refused until it is back" in outcome
    finally:
        stack.store.start(30)  # same port, same files: the append-only file is replayed
    outcomes, deadline = refused(stack, "learner", 1), time.monotonic() + 40
    while outcomes[-3:] != ["ok"] * 3 and time.monotonic() < deadline:  # LiteLLM retries Redis after 5 s
        time.sleep(0.5)
        outcomes += refused(stack, "learner", 1)
    assert outcomes[-3:] == ["ok"] * 3, f"the gateway did not recover once Redis was back: {outcomes}"
    assert all(o == "ok" or o.startswith("503") for o in outcomes), outcomes  # refused until then: never 429
    assert {k: v for k, v in stack.spend().items() if k != "learner"} == {
        k: v for k, v in spent.items() if k != "learner"
    }


def test_streams_cut_by_a_dying_backend_recover_with_the_clients_retry(stack: GatewayStack) -> None:
    result = stream_failover(stack, streams=6, kill_after=3, concurrency=3, max_tokens=30)
    try:
        assert result.killed in ("vllm-a", "vllm-b", "vllm-b-fallback")
        assert result.cut_without_retry >= 1, "no stream was in flight on the killed backend"
        # Where the kill lands is timing: mid-stream (an error event, no [DONE]) or before a stream starts
        # (a 503). Either way the client got no complete answer without its retry. notebook 06 shows
        # the mid-stream cut on real vLLM servers.
        kinds = ("error event", "connection dropped", "the stream ended without", "HTTP 5", "no connection")
        assert all(reason.startswith(kinds) for reason in result.cut_reasons()), result.cut_reasons()
        assert result.recovered_with_retry == result.cut_without_retry and result.lost == 0
    finally:
        for index in range(2):
            if not stack.backends[index].running:
                stack.restart_backend(index, timeout=30)


def test_all_backends_down_is_a_503_that_names_them(stack: GatewayStack) -> None:
    outcomes = all_backends_down(stack, attempts=3)  # retried and refused twice, then in cooldown
    for outcome in outcomes:
        assert outcome.startswith("503: The backends of model group 'lab-model' are unavailable"), outcome
        assert "vllm-a (http://127.0.0.1:" in outcome and "vllm-b (http://127.0.0.1:" in outcome
        assert "not your key's rate limit or budget" in outcome and "No deployments" not in outcome
    assert "cooling down for 30 s (router_settings.cooldown_time:" in outcomes[-1], outcomes[-1]
    client = OpenAI(base_url=stack.openai_base_url, api_key=key_for("learner"), max_retries=0, timeout=60)
    with pytest.raises(APIStatusError) as error:  # what Open WebUI gets: it streams
        client.chat.completions.create(
            model="lab-model", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
        )
    assert error.value.status_code == 503 and error.value.response.headers.get("retry-after") == "30"
