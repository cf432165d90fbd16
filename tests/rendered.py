"""Rendered overlays for the manifest tests, built once per test session on first use (never at collection).

The first call finds kubectl (``make tools`` normally installed it; otherwise the pinned one is installed into
the git-ignored ``tools/bin`` then, inside a test, not while pytest imports test files).
"""

from __future__ import annotations

import copy
from functools import cache, lru_cache
from pathlib import Path

from vllm_workshop import k8s
from vllm_workshop.kubetools import find_kubectl

ROOT = Path(__file__).resolve().parents[1]
OVERLAY_NAMES = [path.name for path in k8s.all_overlays()]  # a glob: no kubectl needed to list them


@lru_cache(maxsize=1)
def kubectl() -> str:
    """The kubectl the tests render with."""
    return find_kubectl()


@cache
def _objects(name: str) -> tuple[dict, ...]:
    return tuple(k8s.load_objects(k8s.render(name, kubectl())))


def objects(name: str) -> list[dict]:
    """A fresh (deep-copied) list of an overlay's rendered objects: tests may change it."""
    return copy.deepcopy(list(_objects(name)))


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    """The objects of one kind."""
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    """The one object of a kind (and name)."""
    (found,) = [o for o in by_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    return found
