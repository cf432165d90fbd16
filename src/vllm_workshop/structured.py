"""Structured output: JSON-schema, regex and choice constrained decoding through the OpenAI API.

With a schema in ``response_format`` (or vLLM's ``structured_outputs`` request field for a regex or a list of
choices), the server masks every token that would break the constraint before sampling, so the answer parses
by construction. The experiment asks the same extraction questions with and without the constraint and counts
the answers that validate against the schema, and what the constraint costs in tokens per second.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema

PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "city": {"type": "string"},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}

PEOPLE = (
    ("Maria", 34, "Lisbon"), ("Kenji", 27, "Osaka"), ("Amara", 45, "Lagos"), ("Lukas", 19, "Vienna"),
    ("Sofia", 52, "Madrid"), ("Omar", 38, "Cairo"), ("Elena", 23, "Rome"), ("Tom", 61, "Leeds"),
    ("Priya", 30, "Pune"), ("Jonas", 42, "Oslo"), ("Ana", 29, "Quito"), ("Wei", 35, "Xi'an"),
    ("Fatima", 48, "Rabat"), ("Liam", 21, "Cork"), ("Yuki", 33, "Sapporo"), ("Nora", 57, "Bergen"),
)  # fmt: skip
SENTENCES = (
    "{n} is {a} years old and lives in {c}.",
    "Meet {n}: {a}, from {c}.",
    "{n}, aged {a}, moved to {c} last year.",
    "In {c} I met {n}, who is {a}.",
)


def extraction_prompts(count: int) -> list[str]:
    """``count`` fixed requests to extract a person's name, age and city as JSON."""
    prompts = []
    for i in range(count):
        name, age, city = PEOPLE[i % len(PEOPLE)]
        text = SENTENCES[i % len(SENTENCES)].format(n=name, a=age, c=city)
        prompts.append(f'Extract the person as JSON with keys "name", "age" and "city". Text: {text}')
    return prompts


def validates(answer: str, schema: dict[str, Any]) -> bool:
    """True when ``answer`` is JSON that validates against ``schema``."""
    try:
        jsonschema.validate(json.loads(answer), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


@dataclass(frozen=True)
class StructuredRun:
    """One pass over the prompts: the answers, how many validate, and the speed."""

    label: str
    answers: list[str]
    valid: int
    completion_tokens: int
    seconds: float

    @property
    def valid_share(self) -> float:
        """Share of answers that parse and validate against the schema."""
        return self.valid / len(self.answers)

    @property
    def tokens_per_s(self) -> float:
        """Completion tokens per wall-clock second over the pass."""
        return self.completion_tokens / self.seconds


def json_schema_format(schema: dict[str, Any], name: str = "answer") -> dict[str, Any]:
    """The OpenAI ``response_format`` for a JSON schema (vLLM enforces it)."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


def run_extraction(
    client: Any,
    model: str,
    prompts: Sequence[str],
    schema: dict[str, Any] | None,
    max_tokens: int = 64,
    concurrency: int = 8,
    label: str = "",
) -> StructuredRun:
    """Ask every prompt (``concurrency`` at a time, greedy); constrained to ``schema`` when one is given."""
    extra: dict[str, Any] = {} if schema is None else {"response_format": json_schema_format(schema)}

    def ask(prompt: str) -> tuple[str, int]:
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            **extra,
        )
        return reply.choices[0].message.content or "", reply.usage.completion_tokens

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        replies = list(pool.map(ask, prompts))
    seconds = time.perf_counter() - started
    answers = [text for text, _ in replies]
    valid = sum(validates(a, PERSON_SCHEMA if schema is None else schema) for a in answers)
    name = label or ("constrained" if schema is not None else "unconstrained")
    return StructuredRun(name, answers, valid, sum(n for _, n in replies), seconds)
