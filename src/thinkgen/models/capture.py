"""Capture of ThinkGen's conditioning states during the MLLM's own forward calls (no second pass)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import Qwen3VLForConditionalGeneration

from thinkgen.models.refine import conditioning_states


class ConditioningCapture:
    """Forward hooks that keep ``hidden_states[-2]`` and ``hidden_states[-1]`` of every forward call.

    Hooks sit on the second-to-last decoder layer (its raw output, as transformers reports ``hidden_states[-2]``)
    and on the language model's final RMSNorm (``hidden_states[-1]``), so only those two layers are stored,
    step by step, during ``generate``: the prefill returns (B, T_prompt, D), each decoding step (B, 1, D).

    Use as a context manager; the hooks are removed on exit. Meant for inference: under gradient checkpointing
    the recomputed forward would fire the hooks again.

    Args:
        model (`Qwen3VLForConditionalGeneration`): the MLLM.
        keep_prefill (`bool`, defaults to True): store the prefill call's states; think mode drops them since
            its span lies entirely in the generated tokens.
        keep_second_to_last (`bool`, defaults to True): store ``hidden_states[-2]``; a DiT that reads the
            embeddings in its place (``caption_layers="embedding_and_last"``) needs only the last layer, and
            :meth:`states` then holds zeros in the first half.
    """

    def __init__(
        self, model: Qwen3VLForConditionalGeneration, keep_prefill: bool = True, keep_second_to_last: bool = True
    ) -> None:
        language_model = model.model.language_model
        num_layers = len(language_model.layers)
        if num_layers < 2:
            raise ValueError(f"the MLLM needs >= 2 decoder layers for hidden_states[-2], got {num_layers}")
        self._second_to_last_layer = language_model.layers[-2]
        self._final_norm = language_model.norm
        self._width = 2 * language_model.config.hidden_size
        self._dtype = model.dtype
        self._device = model.device
        self.keep_prefill = keep_prefill
        self.keep_second_to_last = keep_second_to_last
        self.num_forward_calls = 0
        self._second_to_last: list[torch.Tensor] = []
        self._last: list[torch.Tensor] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _keep(self) -> bool:
        return self.keep_prefill or self.num_forward_calls > 0

    def _on_second_to_last(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if self._keep():
            self._second_to_last.append((output[0] if isinstance(output, tuple) else output).detach())

    def _on_final_norm(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        # The final norm runs once per forward call, after every layer: it closes the call.
        if self._keep():
            self._last.append(output.detach())
        self.num_forward_calls += 1

    def __enter__(self) -> ConditioningCapture:
        self._handles = [self._final_norm.register_forward_hook(self._on_final_norm)]
        if self.keep_second_to_last:
            self._handles.append(self._second_to_last_layer.register_forward_hook(self._on_second_to_last))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def num_bytes(self) -> int:
        """Bytes held by the captured states."""
        return sum(t.numel() * t.element_size() for t in (*self._second_to_last, *self._last))

    def states(self, batch_size: int) -> torch.Tensor:
        """The captured conditioning states, concatenated over calls: `(B, T_captured, 2*D)`."""
        if not self._last:
            return torch.zeros(batch_size, 0, self._width, dtype=self._dtype, device=self._device)
        last = torch.cat(self._last, dim=1)
        if not self.keep_second_to_last:
            return torch.cat([torch.zeros_like(last), last], dim=-1)
        return conditioning_states(torch.cat(self._second_to_last, dim=1), last)
