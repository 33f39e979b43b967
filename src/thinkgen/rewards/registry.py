"""Rewards by name: the registry, dotted-path lookup, and the weighted combination used by the RL stages.

A recipe names its rewards per scenario (``[rewards.text] ocr = 1.0, format = 0.1``); a name is a key
of :data:`REWARDS`, the name of a model-based reward the recipe declares (``[reward_models.<name>]``, see
:mod:`thinkgen.rewards.models`), or a dotted import path (``mypkg.rewards:aesthetic`` or
``mypkg.rewards.aesthetic``) to any callable with the reward interface.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from thinkgen.rewards.format import format_reward
from thinkgen.rewards.reflection import reflection_reward
from thinkgen.rewards.world import (
    geneval_reward,
    geneval_strict_reward,
    ned_reward,
    ocr_reward,
    word_accuracy_reward,
    world_reward,
    world_strict_reward,
)

logger = logging.getLogger(__name__)

RewardFunc = Callable[..., list[float | None]]

REWARDS: dict[str, RewardFunc] = {
    "world": world_reward,
    "world_strict": world_strict_reward,
    "geneval": geneval_reward,
    "geneval_strict": geneval_strict_reward,
    "ocr": ocr_reward,
    "word_accuracy": word_accuracy_reward,
    "ned": ned_reward,
    "format": format_reward,
    "reflection": reflection_reward,
}
"""The built-in rewards by name."""


def get_reward(name: str, models: Mapping[str, RewardFunc] | None = None) -> RewardFunc:
    """The reward called ``name``: a built-in, one of ``models``, or a dotted import path.

    Args:
        name: A registry name, a key of ``models``, or ``package.module:function`` / ``package.module.function``.
        models: Declared model-based rewards by name (:func:`~thinkgen.rewards.models.build_reward_models`).

    Raises:
        ValueError: Unknown name (the message lists the valid ones) or a path that does not resolve to a
            callable.
    """
    known = {**REWARDS, **(models or {})}
    if name in known:
        return known[name]
    if "." not in name and ":" not in name:
        raise ValueError(
            f"unknown reward {name!r}; valid names: {', '.join(sorted(known))} (or a dotted path module.function)"
        )
    module_name, sep, attr = name.partition(":") if ":" in name else name.rpartition(".")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"reward {name!r} does not resolve ({err}); valid names: {', '.join(sorted(known))} or an importable "
            "module.function"
        ) from None
    if not callable(func):
        raise ValueError(f"reward {name!r} resolves to a {type(func).__name__}, not a callable")
    return func


@dataclass(frozen=True)
class WeightedReward:
    """One term of a combination: its name, the callable and its weight."""

    name: str
    func: RewardFunc
    weight: float


def build_rewards(
    weights: Mapping[str, float], models: Mapping[str, RewardFunc] | None = None
) -> list[WeightedReward]:
    """Resolve ``{name: weight}`` into weighted rewards (weights must be > 0); ``models`` as in
    :func:`get_reward`."""
    if not weights:
        raise ValueError("a reward combination needs at least one reward")
    out = []
    for name, weight in weights.items():
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight <= 0:
            raise ValueError(f"the weight of reward {name!r} must be a number > 0, got {weight!r}")
        out.append(WeightedReward(name, get_reward(name, models), float(weight)))
    return out


def combine_rewards(
    rewards: Sequence[WeightedReward], prompts: Sequence[str], images: Sequence[Any], **columns: Any
) -> tuple[list[float | None], dict[str, list[float | None]]]:
    """Call every reward on the batch and average them per item, weighted, over the ones that apply.

    The combination is a weighted *mean* over the rewards that return a score for the item (``None`` ones
    drop out and the rest are renormalised), so a scenario's total stays in the range of its rewards
    whether or not, say, the format reward applies. An item no reward applies to gets ``None``.

    Returns:
        The combined score per item, and each reward's own scores by name.
    """
    per_reward: dict[str, list[float | None]] = {}
    for term in rewards:
        scores = list(term.func(prompts, images, **columns))
        if len(scores) != len(prompts):
            raise ValueError(f"reward {term.name!r} returned {len(scores)} scores for {len(prompts)} items")
        per_reward[term.name] = [None if s is None else float(s) for s in scores]
    total: list[float | None] = []
    for i in range(len(prompts)):
        pairs = [(term.weight, per_reward[term.name][i]) for term in rewards if per_reward[term.name][i] is not None]
        weight = sum(w for w, _ in pairs)
        total.append(sum(w * s for w, s in pairs) / weight if pairs else None)
    return total, per_reward
