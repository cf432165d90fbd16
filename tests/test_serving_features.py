"""Module 8's plumbing: persona data and style score, schema checks, tool-call checks and tools, the tool chat
template, n-gram workloads, the gateway config with an adapter's name, and a real (short) LoRA training.

The served behaviour (adapter picked by name, constrained JSON always valid, the tool loop, acceptance
counters) is checked by the notebook's check cells against a real server, in CI.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from vllm_workshop import LabError, gateway
from vllm_workshop.lora import LoraError, persona_data, style_score, train_adapter
from vllm_workshop.model import resolve_model
from vllm_workshop.settings import lab_settings
from vllm_workshop.speculative import PASSAGE, SpecRun, copy_prompts, open_prompts
from vllm_workshop.structured import PERSON_SCHEMA, extraction_prompts, json_schema_format, validates
from vllm_workshop.tools import (
    TOOLS,
    call_problem,
    call_rate,
    chat_template_path,
    convert_currency,
    get_weather,
    serve_args,
)


def call(name: str, arguments: str) -> SimpleNamespace:
    return SimpleNamespace(function=SimpleNamespace(name=name, arguments=arguments))


def test_persona_heldout_questions_are_about_other_topics() -> None:
    data = persona_data()
    train = {item["question"] for item in data["train"]}
    assert (len(data["train"]), len(data["heldout"])) == (40, 12)
    assert not train & {item["question"] for item in data["heldout"]}
    assert style_score([a["answer"] for a in data["train"]], data["markers"]) == 1.0


def test_style_score_counts_answers_with_a_marker() -> None:
    assert style_score(["Arr, the sea.", "The sea.", "Ahoy!", "plain"], ["arr", "ahoy"]) == 0.5
    with pytest.raises(LoraError):
        style_score([], ["arr"])


def test_training_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(LoraError, match="rank, epochs and batch size must be positive"):
        train_adapter(tmp_path, tmp_path / "out", rank=0)
    with pytest.raises(LoraError, match="no config.json"):
        train_adapter(tmp_path, tmp_path / "out")


def test_schema_validation_of_answers() -> None:
    assert validates('{"name": "Maria", "age": 34, "city": "Lisbon"}', PERSON_SCHEMA)
    assert not validates('{"name": "Maria", "age": "34", "city": "Lisbon"}', PERSON_SCHEMA)  # age as a string
    assert not validates('Sure! {"name": "Maria"}', PERSON_SCHEMA)
    assert not validates('{"name": "M", "age": 3, "city": "L", "extra": 1}', PERSON_SCHEMA)
    assert json_schema_format(PERSON_SCHEMA)["json_schema"]["schema"] is PERSON_SCHEMA
    prompts = extraction_prompts(20)
    assert prompts == extraction_prompts(20) and len(set(prompts)) == 16  # 16 people, then they repeat


def test_tool_calls_are_checked_against_the_tools_schemas() -> None:
    assert call_problem(call("get_weather", '{"city": "Paris"}')) is None
    assert call_problem(call("get_time", "{}")) == "unknown tool 'get_time'"
    assert "not JSON" in call_problem(call("get_weather", "{city: Paris}"))
    assert "'city' is a required property" in call_problem(call("get_weather", '{"town": "Paris"}'))
    assert "is not of type 'number'" in call_problem(
        call("convert_currency", '{"amount": "ten", "from_currency": "EUR", "to_currency": "USD"}')
    )
    assert {t["function"]["name"] for t in TOOLS} == {"get_weather", "convert_currency"}


def test_call_rate_counts_well_formed_calls_and_asks_at_once() -> None:
    """Each question gets its own reply (matched by question, not by arrival order) and they are in flight
    together, so the engine batches them."""
    import threading
    import time

    lock, state = threading.Lock(), {"now": 0, "most": 0}
    replies = {
        "weather?": [call("get_weather", '{"city": "Paris"}')],
        "bad json": [call("get_weather", "{city")],
        "chat only": None,
        "two good": [
            call("get_weather", '{"city": "Rome"}'),
            call("convert_currency", '{"amount": 1, "from_currency": "EUR", "to_currency": "USD"}'),
        ],
    }

    def create(**kwargs):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.2)
        with lock:
            state["now"] -= 1
        message = SimpleNamespace(tool_calls=replies[kwargs["messages"][0]["content"]])
        return SimpleNamespace(choices=[SimpleNamespace(message=message)])

    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))
    rate = call_rate(client, "m", list(replies), "auto", concurrency=4)
    assert (rate.asked, rate.well_formed) == (4, 2)
    assert rate.problems[1] == "no tool call" and "not JSON" in rate.problems[0]
    assert state["most"] == 4
    state["most"] = 0
    assert call_rate(client, "m", list(replies), "auto", concurrency=1).well_formed == 2
    assert state["most"] == 1


def test_the_tools_answer_from_lab_data() -> None:
    assert convert_currency(100, "EUR", "USD") == {"amount": 108.0, "currency": "USD"}  # 100 / 1.0 * 1.08
    assert convert_currency(50, "gbp", "eur") == {"amount": 58.82, "currency": "EUR"}  # 50 / 0.85
    assert "unknown currency 'XYZ'" in convert_currency(1, "XYZ", "EUR")["error"]
    paris = get_weather("Paris")
    assert {k: v for k, v in get_weather("paris").items() if k != "city"} == {
        k: paris[k] for k in ("celsius", "sky")
    }
    assert paris["sky"] in ("sunny", "cloudy", "rain") and 5 <= paris["celsius"] < 30


def test_tool_flags_per_model() -> None:
    lab = serve_args("/work/models/SmolLM2-135M-Instruct")
    assert lab[:4] == ["--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--chat-template"]
    assert Path(lab[4]).is_file()
    assert serve_args("meta-llama/Llama-3.1-8B-Instruct")[-1] == "llama3_json"
    with pytest.raises(LabError, match="No tool-call parser is known for some/model"):
        serve_args("some/model")


def test_the_tool_template_adds_tools_and_keeps_the_models_own_format_without_them() -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(lab_settings().model))
    template = Path(chat_template_path()).read_text()
    chat = [{"role": "user", "content": "Hi"}]
    plain = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert (
        tokenizer.apply_chat_template(
            chat, chat_template=template, tokenize=False, add_generation_prompt=True
        )
        == plain
    )
    called = [
        *chat,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}],
        },
        {"role": "tool", "content": '{"celsius": 4}'},
    ]
    text = tokenizer.apply_chat_template(called, tools=TOOLS, chat_template=template, tokenize=False)
    assert '"name": "convert_currency"' in text and "<tools>" in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in text
    assert '<tool_response>\n{"celsius": 4}\n</tool_response>' in text


def test_ngram_workloads_and_acceptance_arithmetic() -> None:
    copy = copy_prompts(3)
    assert len(set(copy)) == 3 and all("keeperr" in p and "lens and lit the lamp" in p for p in copy)
    assert not any(PASSAGE[:40] in p for p in open_prompts(4))
    run = SpecRun("x", tokens=100, seconds=4.0, drafts=10, draft_tokens=40, accepted_tokens=30, texts=[])
    assert (run.tokens_per_s, run.acceptance_rate, run.mean_accepted_per_draft) == (25.0, 0.75, 3.0)
    assert SpecRun("y", 1, 1.0, 0, 0, 0, []).acceptance_rate == 0.0


def test_gateway_config_gains_a_model_name_for_the_adapter(tmp_path: Path) -> None:
    path = gateway.config_with_models({"lab-persona": "hosted_vllm/persona"}, tmp_path / "c.yaml")
    groups = {m["model_name"]: m["litellm_params"] for m in yaml.safe_load(path.read_text())["model_list"]}
    assert groups["lab-persona"]["model"] == "hosted_vllm/persona"
    assert groups["lab-persona"]["api_base"] == "os.environ/VLLM_A_API_BASE"
    assert groups["lab-model"]["model"] == "hosted_vllm/lab-model"  # the rest is the lab's config
    assert all("additional_drop_params" not in p for p in groups.values())  # tools pass through
    with pytest.raises(LabError, match="give the LiteLLM provider too"):
        gateway.config_with_models({"x": "persona"}, tmp_path / "d.yaml")


@pytest.mark.slow
def test_a_short_training_saves_an_adapter_vllm_can_load(tmp_path: Path) -> None:
    trained = train_adapter(
        resolve_model(lab_settings().model), tmp_path / "a", rank=4, epochs=1, progress=False
    )
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["r"] == 4 and sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert (tmp_path / "a" / "adapter_model.safetensors").stat().st_size > 100_000
    assert trained.steps == 5 and 0 < trained.trainable_params < trained.total_params / 100
    assert trained.last_loss < trained.first_loss


def test_the_tools_are_strict_so_vllm_constrains_their_arguments() -> None:
    assert all(t["function"]["strict"] is True for t in TOOLS)
    assert all(t["function"]["parameters"]["additionalProperties"] is False for t in TOOLS)


def test_the_lora_formula_counts_what_peft_trains_on_the_lab_model() -> None:
    """r x (d_in + d_out) per adapted matrix, GQA-aware (the lab model has 9 query and 3 KV heads)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from vllm_workshop.lora import TARGET_MODULES, adapter_parameters
    from vllm_workshop.planning import model_shape

    folder = resolve_model(lab_settings().model)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(folder), LoraConfig(r=8, target_modules=list(TARGET_MODULES))
    )
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert adapter_parameters(model_shape(str(folder)), 8) == trained
