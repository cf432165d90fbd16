"""Fixed, reproducible request sets for the experiments: chat prompts and a shared system prompt."""

from __future__ import annotations

import random
from typing import Any

TOPICS = (
    "the water cycle",
    "photosynthesis",
    "how a bicycle gear works",
    "why the sky is blue",
    "the French revolution",
    "compound interest",
    "how vaccines work",
    "the rules of chess",
    "black holes",
    "how a CPU cache works",
    "the history of tea",
    "plate tectonics",
    "how bread rises",
    "the Pythagorean theorem",
    "coral reefs",
    "how airplanes fly",
    "the printing press",
    "recycling plastics",
    "the human heart",
    "electric cars",
)
TASKS = (
    "Explain {t} in two sentences.",
    "Give three facts about {t}.",
    "Write a short paragraph about {t} for a ten-year-old.",
    "What is the most surprising thing about {t}?",
    "Summarise {t} in one sentence.",
)

SYSTEM_PROMPT = (
    "You are the help desk assistant of the Northwind Outdoor Gear shop. Policies you must follow: "
    + " ".join(
        f"Policy {i}: items in category {c} may be returned within {d} days with a receipt, "
        f"exchanges are free, and refunds go back to the original payment method "
        f"within {d // 3 + 2} working days."
        for i, (c, d) in enumerate(
            [
                ("tents", 30),
                ("boots", 60),
                ("jackets", 45),
                ("stoves", 30),
                ("backpacks", 90),
                ("lamps", 14),
                ("ropes", 30),
                ("kayaks", 21),
                ("bikes", 30),
                ("skis", 60),
                ("maps", 7),
                ("gloves", 30),
            ],
            start=1,
        )
    )
    + " Answer in at most two sentences."
)
SUPPORT_QUESTIONS = (
    "Can I return boots I bought last month?",
    "How long do refunds for kayaks take?",
    "Are exchanges free for jackets?",
    "Can I return a lamp after three weeks?",
    "Do I need a receipt for a tent?",
    "What is the return window for skis?",
    "How do I get a refund for gloves?",
    "Can I exchange a backpack?",
)


def chat_requests(n: int, seed: int = 0) -> list[list[dict[str, Any]]]:
    """``n`` varied single-turn chats (the same ``n`` and ``seed`` always give the same list)."""
    rng = random.Random(seed)
    return [[{"role": "user", "content": rng.choice(TASKS).format(t=rng.choice(TOPICS))}] for _ in range(n)]


def support_requests(n: int) -> list[list[dict[str, Any]]]:
    """``n`` chats sharing one long system prompt (the prefix caching experiment)."""
    return [
        [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": SUPPORT_QUESTIONS[i % len(SUPPORT_QUESTIONS)] + f" (ticket {i})"},
        ]
        for i in range(n)
    ]


def long_chat(repeats: int = 4) -> list[dict[str, Any]]:
    """One chat with a long document to summarise (the chunked-prefill experiment): the shop's policies,
    ``repeats`` times (each copy is a few hundred tokens)."""
    document = "\n\n".join(f"Section {i + 1}. {SYSTEM_PROMPT}" for i in range(repeats))
    return [{"role": "user", "content": f"Summarise this document in one sentence.\n\n{document}"}]


def render_chats(tokenizer: Any, chats: list[list[dict[str, Any]]]) -> list[str]:
    """Apply the model's chat template so that every engine sees identical prompt text."""
    return [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
