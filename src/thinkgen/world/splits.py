"""Train / val / test splits of the world, and the per-sample random stream.

Splits are disjoint in prompt text: a prompt's split is a hash of its (normalised) text, and a generator
keeps drawing until its prompt lands in the requested split. The test split also holds out fixed
colour–shape pairs (:data:`HELD_OUT_PAIRS`) and facts (:data:`~thinkgen.world.knowledge.HELD_OUT_FACTS`)
that train and val never show, so test accuracy on them measures generalisation to new compositions.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable

from .knowledge import asks_held_out_fact
from .scene import Scene, WorldConfig

SPLITS: tuple[str, ...] = ("train", "val", "test")
# Upper edges of each split's share of the prompt-hash range [0, 1).
_SPLIT_EDGES: tuple[tuple[str, float], ...] = (("train", 0.8), ("val", 0.9), ("test", 1.0))

# One pair per shape, each with a different colour, so every shape and colour keeps other partners in
# training; filtered to the shapes and colours of the world in use.
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("star", "red"),
    ("circle", "blue"),
    ("triangle", "green"),
    ("square", "yellow"),
    ("diamond", "purple"),
    ("cross", "orange"),
)


def check_split(split: str) -> None:
    """Raise ``ValueError`` unless ``split`` is one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")


def _unit_hash(text: str) -> float:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_of_text(text: str) -> str:
    """The split that owns prompt ``text`` (case and spacing ignored); fixed for all seeds."""
    u = _unit_hash(" ".join(text.lower().split()))
    return next(name for name, edge in _SPLIT_EDGES if u < edge)


def sample_rng(seed: int, split: str, scenario: str, index: int) -> random.Random:
    """The random stream of one sample: a hash of its coordinates, so any sample can be made alone."""
    digest = hashlib.blake2b(f"{seed}/{split}/{scenario}/{index}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def held_out_pairs(config: WorldConfig) -> frozenset[tuple[str, str]]:
    """The (shape, colour) pairs of :data:`HELD_OUT_PAIRS` that exist in the world of ``config``."""
    return frozenset((s, c) for s, c in HELD_OUT_PAIRS if s in config.shapes and c in config.colours)


def uses_held_out(config: WorldConfig, scenes: Iterable[Scene], fact_ids: Iterable[str]) -> bool:
    """Whether any scene shows a held-out pair or any fact is held out."""
    pairs = held_out_pairs(config)
    if any((o.shape, o.colour) in pairs for scene in scenes for o in scene.objects):
        return True
    return asks_held_out_fact(fact_ids)
