"""The format reward: the MLLM closed its thought exactly once and wrote a non-empty instruction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from thinkgen.models.mllm import CHAT_TOKENS


def format_reward(
    prompts: Sequence[str],
    images: Sequence[Any],
    *,
    completions: Sequence[str] | None = None,
    **columns: Any,
) -> list[float | None]:
    """1.0 if the completion closes ``</think>`` exactly once and an instruction follows it, else 0.0.

    A thought that is never closed (the budget forced nothing, or the turn ended inside it) or closed
    twice leaves the DiT an ill-defined span (:mod:`thinkgen.models.refine`); an empty instruction gives
    it nothing to draw from.

    Args:
        prompts: The prompts (unused).
        images: The rendered images (unused).
        completions: Per item, the generated text with special tokens kept (``MLLMOutput.text``);
            ``None`` (no-think rollouts) makes every item not applicable.

    Returns:
        One of 1.0 / 0.0 per item, or ``None`` for all when no completions are given.
    """
    if completions is None:
        return [None] * len(prompts)
    if len(completions) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions")
    out: list[float | None] = []
    for text in completions:
        head, _, tail = text.partition(CHAT_TOKENS.think_end)
        instruction = tail.split(CHAT_TOKENS.im_end)[0].strip()
        out.append(float(text.count(CHAT_TOKENS.think_end) == 1 and bool(instruction)))
    return out
