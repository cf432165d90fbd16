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


CASE_FACTS = (
    "ordered a {item} on day {a} and it arrived on day {b}",
    "paid {a} euros for a {item} and asked for a refund of {b} euros",
    "reported that the {item} broke after {a} days of use in {place}",
    "wants to exchange a {item} for a size {a} model before trip {b}",
    "called {a} times about a {item} shipped to {place}",
)
ITEMS = ("tent", "boot", "jacket", "stove", "backpack", "lamp", "rope", "kayak", "bike", "ski")
PLACES = ("Oslo", "Lyon", "Turin", "Graz", "Porto", "Cork", "Ghent", "Bern")
FOLLOW_UPS = (
    "Summarise this case in one sentence.",
    "What should the agent offer the customer?",
    "Which policy applies here?",
    "Write a one-line reply to the customer.",
)


def shared_prefix_conversations(
    n: int, turns: int = 3, facts: int = 36, seed: int = 0, think_s: tuple[float, float] = (0.2, 1.0)
) -> list[Any]:
    """``n`` multi-turn support conversations, each about its own long case file (``facts`` sentences, a few
    hundred tokens) in the system prompt: every turn of a conversation repeats that prefix and the history,
    so a replica that served the previous turn has it cached; different conversations share nothing. Users
    pause between turns (uniform in ``think_s`` seconds), so turns arrive in no fixed order."""
    from .loadgen import Conversation

    rng = random.Random(seed)
    chats = []
    for i in range(n):
        case = f"Case {seed}-{i}. " + " ".join(
            f"The customer {rng.choice(CASE_FACTS).format(item=rng.choice(ITEMS), a=rng.randint(2, 90), b=rng.randint(2, 90), place=rng.choice(PLACES))}."  # noqa: E501
            for _ in range(facts)
        )
        system = f"{case}\n\nYou are a support agent for this case. Answer in one sentence."
        asks = tuple(FOLLOW_UPS[(i + k) % len(FOLLOW_UPS)] for k in range(turns))
        pauses = tuple(round(rng.uniform(*think_s), 2) for _ in range(turns - 1))
        chats.append(Conversation(f"case {i}", system, asks, pauses))
    return chats


def one_prefix_conversations(n: int, turns: int = 2, seed: int = 0) -> list[Any]:
    """``n`` conversations that all start with the same long system prompt (the shop's policies, opened by
    a line naming ``seed``, so each run's prefix is new to the caches): a cache-aware router sends them all
    where that prefix is cached (one replica) until it balances load."""
    from .loadgen import Conversation

    system = f"Help desk shift {seed}. {SYSTEM_PROMPT}"
    return [
        Conversation(
            f"shop {i}",
            system,
            tuple(
                f"{SUPPORT_QUESTIONS[(i + k) % len(SUPPORT_QUESTIONS)]} (customer {i})" for k in range(turns)
            ),  # noqa: E501
        )
        for i in range(n)
    ]
