"""VGI-refine: keep the MLLM's hidden states of the instruction written after the first ``</think>``.

ThinkGen conditions its DiT on the hidden states of the tokens the MLLM writes *after* it closes its thought
(Sec. 3.2, "Visual Generation Instruction refinement"): the reasoning itself is dropped. This module turns
per-token states of whole sequences into a right-padded batch of instruction states with a mask.

The K learnable prepadding states that the paper prepends to these states belong to the DiT (``prepad_embed``
in ``models/dit.py``); they are not added here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

OnMissingThinkEnd = Literal["error", "all", "empty"]
ON_MISSING_THINK_END: tuple[str, ...] = ("error", "all", "empty")


class ThoughtNotClosedError(ValueError):
    """The MLLM ended its turn without closing its thought (``on_missing="error"``): a fault of the generation,
    not of the caller's arguments, so callers such as the server can tell the two apart."""


def normalise_instruction(text: str) -> str:
    """An instruction as compared with another: lower case, full stops and runs of whitespace ignored."""
    return " ".join(text.lower().replace(".", " ").split())


def is_match_verdict(instruction: str, verdict: str) -> bool:
    """Whether an instruction is the MLLM's reflection verdict that the image already matches its prompt.

    Compared as :func:`normalise_instruction` writes them; the instruction may go on after the verdict.
    """
    return normalise_instruction(instruction).startswith(normalise_instruction(verdict))


def conditioning_states(second_to_last_states: torch.Tensor, last_states: torch.Tensor) -> torch.Tensor:
    """The DiT's conditioning features: ``cat([hidden_states[-2], hidden_states[-1]], -1)``.

    Args:
        second_to_last_states (`torch.Tensor` of shape `(B, T, D)`): raw output of the second-to-last decoder
            layer (what transformers returns as ``hidden_states[-2]``).
        last_states (`torch.Tensor` of shape `(B, T, D)`): output of the language model after its final RMSNorm
            (``hidden_states[-1]``).

    Returns:
        `torch.Tensor` of shape `(B, T, 2*D)`.
    """
    if second_to_last_states.shape != last_states.shape:
        raise ValueError(
            f"second_to_last_states {tuple(second_to_last_states.shape)} and last_states "
            f"{tuple(last_states.shape)} must have the same shape"
        )
    return torch.cat([second_to_last_states, last_states], dim=-1)


@dataclass
class RefinedInstruction:
    """Instruction states selected by :func:`vgi_refine`, right-padded to the longest span.

    Attributes:
        instruction_states (`torch.Tensor` of shape `(B, L, 2*D)`): states of the instruction tokens; padded
            positions are zeros.
        instruction_mask (`torch.Tensor` of shape `(B, L)`, bool): True on real tokens.
        instruction_ids (`torch.Tensor` of shape `(B, L)`): token ids of the span; padded with ``pad_token_id``.
        is_thought_closed (`torch.Tensor` of shape `(B,)`, bool): whether the row contains ``</think>``.
    """

    instruction_states: torch.Tensor
    instruction_mask: torch.Tensor
    instruction_ids: torch.Tensor
    is_thought_closed: torch.Tensor


def first_true_index(flags: torch.Tensor) -> torch.Tensor:
    """Index of the first True per row of a `(B, T)` bool tensor; T where a row has none. Returns `(B,)`."""
    num_positions = flags.shape[1]
    if num_positions == 0:
        return torch.zeros(flags.shape[0], dtype=torch.long, device=flags.device)
    positions = torch.arange(num_positions, device=flags.device).expand_as(flags)
    return torch.where(flags, positions, num_positions).amin(dim=1)


def instruction_span_mask(
    input_ids: torch.Tensor,
    think_end_token_id: int,
    end_token_id: int | None = None,
    attention_mask: torch.Tensor | None = None,
    on_missing: OnMissingThinkEnd = "error",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mark, per row, the tokens strictly after the first ``</think>`` and before the end-of-turn token.

    Args:
        input_ids (`torch.Tensor` of shape `(B, T)`): token ids.
        think_end_token_id (`int`): id of ``</think>``, looked up from the tokenizer.
        end_token_id (`int`, *optional*): id of the end-of-turn token (``<|im_end|>``); the span stops before
            its first occurrence after ``</think>``. None: the span runs to the last valid token.
        attention_mask (`torch.Tensor` of shape `(B, T)`, *optional*): 1 on real tokens, 0 on padding (any side).
        on_missing (`str`, defaults to `"error"`): what a row without ``</think>`` gets: `"error"` raises
            ValueError, `"all"` keeps all its valid tokens (before any end token), `"empty"` keeps none.

    Returns:
        `(span_mask, is_thought_closed)`: bool tensors of shapes `(B, T)` and `(B,)`.
    """
    if on_missing not in ON_MISSING_THINK_END:
        raise ValueError(f"on_missing={on_missing!r}; expected one of {ON_MISSING_THINK_END}")
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)

    is_think_end = (input_ids == think_end_token_id) & valid
    is_thought_closed = is_think_end.any(dim=1)
    if on_missing == "error" and not bool(is_thought_closed.all()):
        rows = (~is_thought_closed).nonzero().flatten().tolist()
        raise ThoughtNotClosedError(
            f"rows {rows} contain no </think> (id {think_end_token_id}): the thought was never closed. "
            "Pass on_missing='all' to condition on all their tokens or 'empty' to condition on none."
        )
    # Rows without </think> start at -1, so that "all" keeps every valid token.
    first_think_end = torch.where(is_thought_closed, first_true_index(is_think_end), -1)
    span = (positions > first_think_end[:, None]) & valid
    if end_token_id is not None:
        end = first_true_index((input_ids == end_token_id) & span)
        span &= positions < end[:, None]
    if on_missing == "empty":
        span &= is_thought_closed[:, None]
    return span, is_thought_closed


def vgi_refine(
    hidden_states: torch.Tensor,
    input_ids: torch.Tensor,
    think_end_token_id: int,
    end_token_id: int | None = None,
    attention_mask: torch.Tensor | None = None,
    on_missing: OnMissingThinkEnd = "error",
    pad_token_id: int = 0,
) -> RefinedInstruction:
    """Select the instruction states of each row and right-pad them into one batch.

    Args:
        hidden_states (`torch.Tensor` of shape `(B, T, C)`): per-token states aligned with `input_ids`
            (C = 2*D for ThinkGen's conditioning features).
        input_ids (`torch.Tensor` of shape `(B, T)`): token ids.
        think_end_token_id (`int`): id of ``</think>``.
        end_token_id (`int`, *optional*): id of the end-of-turn token, excluded with everything after it.
        attention_mask (`torch.Tensor` of shape `(B, T)`, *optional*): 1 on real tokens.
        on_missing (`str`, defaults to `"error"`): rows without ``</think>``; see :func:`instruction_span_mask`.
        pad_token_id (`int`, defaults to 0): fills `instruction_ids` where the mask is False.

    Returns:
        :class:`RefinedInstruction` with states `(B, L, C)`, mask and ids `(B, L)`, L = the longest span.
    """
    if hidden_states.shape[:2] != input_ids.shape:
        raise ValueError(
            f"hidden_states {tuple(hidden_states.shape)} must align with input_ids {tuple(input_ids.shape)}"
        )
    span, is_thought_closed = instruction_span_mask(
        input_ids, think_end_token_id, end_token_id, attention_mask, on_missing
    )
    lengths = span.sum(dim=1)
    max_length = int(lengths.max()) if lengths.numel() else 0
    # A stable sort moves each row's span positions to the front, in order.
    order = torch.sort((~span).to(torch.int8), dim=1, stable=True).indices[:, :max_length]  # (B, L)
    instruction_mask = torch.arange(max_length, device=span.device)[None, :] < lengths[:, None]  # (B, L)
    states = torch.gather(hidden_states, 1, order[..., None].expand(-1, -1, hidden_states.shape[-1]))
    states = states.masked_fill(~instruction_mask[..., None], 0.0)  # (B, L, C)
    ids = torch.gather(input_ids, 1, order).masked_fill(~instruction_mask, pad_token_id)
    return RefinedInstruction(states, instruction_mask, ids, is_thought_closed)
