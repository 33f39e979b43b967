"""Memory of the conditioning capture vs ``output_hidden_states=True``, and MLLM forward calls per generation.

ThinkGen conditions its DiT on ``cat(hidden_states[-2], hidden_states[-1])`` of the instruction written after
``</think>``. The released code asks ``generate`` for ``output_hidden_states=True``, which keeps every layer's
states at every step (prompt included). ``ConditioningCapture`` hooks only the two layers needed and, in think
mode, only the decoding steps. Both runs below generate the same tokens (greedy; the thinking budget forces
``</think>`` and ``<|im_end|>`` at fixed steps), so the bytes compare like for like.

    python benchmarks/mllm_capture_memory.py                          # tiny MLLM, CPU
    python benchmarks/mllm_capture_memory.py --num-layers 12 --thinking-tokens 512 --batch-size 4
"""

from __future__ import annotations

import argparse
import time

import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from thinkgen.models.capture import ConditioningCapture
from thinkgen.models.mllm import ThinkingBudgetProcessor, build_prompt
from thinkgen.models.tiny import TinyQwen3VLSpec, build_tiny_mllm

# ---- args -------------------------------------------------------------------------------------------
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--num-layers", type=int, default=3)  # text decoder layers of the tiny MLLM
parser.add_argument("--hidden-size", type=int, default=64)
parser.add_argument("--batch-size", type=int, default=2)
parser.add_argument("--thinking-tokens", type=int, default=128)
parser.add_argument("--instruction-tokens", type=int, default=24)
parser.add_argument("--repeats", type=int, default=5)
args = parser.parse_args()


class BanTokens(LogitsProcessor):
    """Keeps the model from ending its thought or turn by itself, so the budget sets every length."""

    def __init__(self, token_ids: list[int]) -> None:
        self.token_ids = token_ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores[:, self.token_ids] = float("-inf")
        return scores


# ---- model and inputs -------------------------------------------------------------------------------
spec = TinyQwen3VLSpec(num_hidden_layers=args.num_layers, hidden_size=args.hidden_size)
mllm = build_tiny_mllm(spec)
model = mllm.model
image = Image.new("RGB", (64, 64), (200, 40, 40))
texts = [build_prompt(f"draw {n} red circles", num_images=1) for n in range(args.batch_size)]
inputs = mllm.processor(
    text=texts, images=[image] * args.batch_size, padding=True, padding_side="left", return_tensors="pt"
)
prompt_length = inputs["input_ids"].shape[1]
max_new_tokens = args.thinking_tokens + args.instruction_tokens + 2


def processors() -> LogitsProcessorList:
    return LogitsProcessorList([
        BanTokens([mllm.think_end_token_id, mllm.end_token_id]),
        ThinkingBudgetProcessor(
            prompt_length, mllm.think_end_token_id, mllm.end_token_id, args.thinking_tokens, args.instruction_tokens
        ),
    ])


generate_kwargs = dict(
    max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=mllm.end_token_id, pad_token_id=mllm.pad_token_id,
)
calls: list[int] = []
model.register_forward_pre_hook(lambda module, hook_args: calls.append(1))


# ---- 1. hooks on two layers (ThinkGen) ------------------------------------------------------------------
def run_capture() -> tuple[torch.Tensor, int, int]:
    calls.clear()
    with torch.no_grad(), ConditioningCapture(model, keep_prefill=False) as capture:
        sequences = model.generate(**inputs, logits_processor=processors(), **generate_kwargs)
    return sequences, capture.num_bytes, len(calls)


# ---- 2. output_hidden_states=True over all layers and steps (released inference code) -------------------
def run_all_layers() -> tuple[torch.Tensor, int, int]:
    calls.clear()
    with torch.no_grad():
        out = model.generate(
            **inputs, logits_processor=processors(), output_hidden_states=True, return_dict_in_generate=True,
            **generate_kwargs,
        )
    num_bytes = sum(t.numel() * t.element_size() for step in out.hidden_states for t in step)
    return out.sequences, num_bytes, len(calls)


# Interleave the two runs and keep each one's fastest: the minimum is the least disturbed by other processes.
best = {"capture": float("inf"), "all-layers": float("inf")}
for _ in range(args.repeats):
    for name, fn in (("capture", run_capture), ("all-layers", run_all_layers)):
        start = time.perf_counter()
        result = fn()
        best[name] = min(best[name], time.perf_counter() - start)
        if name == "capture":
            seq_capture, bytes_capture, calls_capture = result
        else:
            seq_all, bytes_all, calls_all = result
time_capture, time_all = best["capture"], best["all-layers"]
assert torch.equal(seq_capture, seq_all), "both runs must generate the same tokens"
num_generated = seq_capture.shape[1] - prompt_length

# ---- report -----------------------------------------------------------------------------------------
print(f"tiny MLLM: {args.num_layers} layers, D={args.hidden_size}, batch {args.batch_size}, prompt {prompt_length} "
      f"tokens (1 image), {num_generated} generated tokens")
print(f"captured conditioning (2 layers, decoding steps): {bytes_capture / 2**10:10.1f} KiB")
print(f"output_hidden_states=True (all layers, all steps): {bytes_all / 2**10:10.1f} KiB")
print(f"memory ratio all-layers / capture: {bytes_all / bytes_capture:.1f}x")
print(f"forward calls per generation: capture {calls_capture}, all-layers {calls_all} "
      f"(= generated tokens {num_generated}; a re-encode of the sequence would add 1 more)")
print(f"generate wall time: capture {time_capture * 1e3:.1f} ms, all-layers {time_all * 1e3:.1f} ms, "
      f"ratio {time_all / time_capture:.2f}x (best of {args.repeats})")

# Same accounting for Qwen3-VL-8B's 36 layers (37 hidden states) at these lengths, as arithmetic, not a run.
layers_8b = 36
ratio_8b = (layers_8b + 1) * (prompt_length + num_generated - 1) / (2 * (num_generated - 1))
print(f"same lengths at Qwen3-VL-8B depth ({layers_8b} layers), by arithmetic: {ratio_8b:.1f}x")
