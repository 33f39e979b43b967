"""Rewards for RL and evaluation: plain callables ``reward(prompts, images, **columns) -> list[float | None]``.

Built-ins (:data:`REWARDS`): ``world`` / ``world_strict`` (the world judge), ``geneval`` /
``geneval_strict`` (object clauses only), ``ocr``, ``word_accuracy``, ``ned`` (words), ``format`` (the
thought is closed once and an instruction follows), ``reflection`` (verdict right, or the edit fixes it).
Model-based rewards (:mod:`.models`: image–text similarity from a local CLIP / SigLIP folder, a VLM judge
over an OpenAI-compatible endpoint) need settings, so a recipe declares them in ``[reward_models.<name>]``
tables (:func:`build_reward_models`) and uses their names like the built-ins'.
:func:`get_reward` finds one by name or dotted path; :func:`combine_rewards` averages several, weighted.

Example:
    >>> from thinkgen.rewards import get_reward
    >>> get_reward("world")(["one red circle"], [image], specs=[sample.spec])
    [1.0]
"""

from thinkgen.rewards.format import format_reward
from thinkgen.rewards.models import (
    REWARD_MODEL_KINDS,
    ImageTextSimilarityReward,
    RewardModelError,
    VLMJudgeReward,
    build_reward_models,
)
from thinkgen.rewards.reflection import reflection_reward
from thinkgen.rewards.registry import REWARDS, RewardFunc, WeightedReward, build_rewards, combine_rewards, get_reward
from thinkgen.rewards.world import (
    geneval_reward,
    geneval_strict_reward,
    ned_reward,
    ocr_reward,
    word_accuracy_reward,
    world_reward,
    world_strict_reward,
)

__all__ = [
    "REWARDS",
    "REWARD_MODEL_KINDS",
    "ImageTextSimilarityReward",
    "RewardFunc",
    "RewardModelError",
    "VLMJudgeReward",
    "WeightedReward",
    "build_reward_models",
    "build_rewards",
    "combine_rewards",
    "format_reward",
    "geneval_reward",
    "geneval_strict_reward",
    "get_reward",
    "ned_reward",
    "ocr_reward",
    "reflection_reward",
    "word_accuracy_reward",
    "world_reward",
    "world_strict_reward",
]
