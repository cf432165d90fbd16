"""Tool calling through the OpenAI API: two tools, the call -> execute -> answer loop, well-formed call rate.

vLLM turns the model's text into OpenAI ``tool_calls`` with a tool-call parser that must match the format the
chat template asks for. SmolLM2's own template has no tools; the lab serves it with
``components/tool-calling/tool_chat_template.jinja`` (ChatML plus Hermes-style ``<tool_call>`` tags) and
``--tool-call-parser hermes``. With ``tool_choice="auto"`` the model decides and its text is parsed
afterwards; with ``"required"`` (or a named function) vLLM constrains decoding to a call, and its arguments
to the function's schema when the function is ``strict`` (without it, measured here: the arguments were free
JSON that matched no schema).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from .errors import LabError
from .paths import project_root

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city: temperature in Celsius and the sky.",
            "strict": True,  # vLLM constrains the arguments to the schema only for strict functions
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City name, e.g. Paris"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "convert_currency",
            "description": "Convert an amount of money from one currency to another.",
            "strict": True,
            "parameters": {
                "type": "object",
                "properties": {
                    "amount": {"type": "number"},
                    "from_currency": {"type": "string", "description": "ISO code, e.g. EUR"},
                    "to_currency": {"type": "string", "description": "ISO code, e.g. USD"},
                },
                "required": ["amount", "from_currency", "to_currency"],
                "additionalProperties": False,
            },
        },
    },
]
RATES = {"EUR": 1.0, "USD": 1.08, "GBP": 0.85, "JPY": 162.0, "CHF": 0.95}  # lab data, not live rates
QUESTIONS = (
    "What is the weather in Paris?",
    "How warm is it in Tokyo right now?",
    "Convert 100 EUR to USD.",
    "How many JPY do I get for 50 GBP?",
    "Is it raining in London?",
    "What is 20 USD in CHF?",
    "Weather report for Berlin, please.",
    "Change 75 CHF into EUR.",
)


def chat_template_path() -> str:
    """The tool-aware chat template the lab serves SmolLM2 with (the cluster mounts the same file)."""
    return str(project_root() / "components" / "tool-calling" / "tool_chat_template.jinja")


# Models whose own chat template already renders tools, and the parser that reads their calls.
OWN_TEMPLATE_PARSERS = {"Qwen/Qwen2.5": "hermes", "meta-llama/Llama-3.1": "llama3_json"}


def serve_args(model: str) -> list[str]:
    """``vllm serve`` flags for tool calling with ``model``: the lab model gets the lab's template.

    Raises :class:`~vllm_workshop.errors.LabError` for a model whose tool format the lab does not know.
    """
    if "smollm2" in model.lower():
        template = chat_template_path()
        return ["--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--chat-template", template]
    for prefix, parser in OWN_TEMPLATE_PARSERS.items():
        if model.startswith(prefix):
            return ["--enable-auto-tool-choice", "--tool-call-parser", parser]
    raise LabError(
        f"No tool-call parser is known for {model}: find the one that matches its chat template "
        "(vLLM's tool calling docs list them) and pass --enable-auto-tool-choice --tool-call-parser NAME."
    )


def get_weather(city: str) -> dict[str, Any]:
    """Deterministic lab weather (no network): the same city always gets the same answer."""
    code = sum(map(ord, city.strip().lower()))
    return {"city": city, "celsius": 5 + code % 25, "sky": ("sunny", "cloudy", "rain")[code % 3]}


def convert_currency(amount: float, from_currency: str, to_currency: str) -> dict[str, Any]:
    """Convert with the lab's fixed rates; an unknown code is reported, not raised (the model sees it)."""
    rates = {k.upper(): v for k, v in RATES.items()}
    missing = [c for c in (from_currency, to_currency) if c.upper() not in rates]
    if missing:
        return {"error": f"unknown currency {missing[0]!r}; known: {', '.join(RATES)}"}
    value = float(amount) / rates[from_currency.upper()] * rates[to_currency.upper()]
    return {"amount": round(value, 2), "currency": to_currency.upper()}


FUNCTIONS = {"get_weather": get_weather, "convert_currency": convert_currency}


def call_problem(call: Any) -> str | None:
    """Why a tool call is not well-formed (unknown tool, arguments not JSON or not matching), or None."""
    name = call.function.name
    spec = next((t["function"] for t in TOOLS if t["function"]["name"] == name), None)
    if spec is None:
        return f"unknown tool {name!r}"
    try:
        arguments = json.loads(call.function.arguments or "{}")
        jsonschema.validate(arguments, spec["parameters"])
    except ValueError as exc:
        return f"arguments are not JSON: {exc}"
    except jsonschema.ValidationError as exc:
        return f"arguments do not match {name}'s parameters: {exc.message}"
    return None


@dataclass
class ToolLoop:
    """One conversation: the calls the model made, what the tools returned, the final answer."""

    question: str
    calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    answer: str = ""
    problem: str | None = None


def tool_loop(
    client: Any, model: str, question: str, tool_choice: str = "auto", max_tokens: int = 96, rounds: int = 2
) -> ToolLoop:
    """Ask, execute the tool calls the model makes, send their results back, and get the final answer."""
    loop = ToolLoop(question)
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    for round_ in range(rounds):
        choice = tool_choice if round_ == 0 else "none"  # after the results: answer in words
        reply = client.chat.completions.create(
            model=model,
            messages=messages,
            tools=TOOLS,
            tool_choice=choice,
            max_tokens=max_tokens,
            temperature=0.0,
        )
        message = reply.choices[0].message
        if not message.tool_calls:
            loop.answer = message.content or ""
            return loop
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            problem = call_problem(call)
            if problem:
                loop.problem = problem
                return loop
            arguments = json.loads(call.function.arguments)
            result = FUNCTIONS[call.function.name](**arguments)
            loop.calls.append((call.function.name, arguments, result))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    return loop


@dataclass(frozen=True)
class CallRate:
    """Well-formed tool calls on a fixed question set, for one ``tool_choice``."""

    tool_choice: str
    asked: int
    well_formed: int
    problems: list[str]

    @property
    def share(self) -> float:
        """Share of questions answered with a well-formed call."""
        return self.well_formed / self.asked


def call_rate(
    client: Any, model: str, questions: Sequence[str], tool_choice: str, concurrency: int = 8
) -> CallRate:
    """Ask each question once (greedy, ``concurrency`` at a time, batched by the engine); count the replies
    whose every tool call is well-formed."""

    def ask(question: str) -> list[str]:
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            tools=TOOLS,
            tool_choice=tool_choice,
            max_tokens=64,
            temperature=0,
        )
        calls = reply.choices[0].message.tool_calls or []
        return [p for p in map(call_problem, calls) if p] or ([] if calls else ["no tool call"])

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        found = list(pool.map(ask, questions))
    problems = [p for f in found for p in f]
    return CallRate(tool_choice, len(questions), sum(not f for f in found), problems)
