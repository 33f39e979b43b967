"""Group rollouts with one shared prefill vs G separate prompts: seconds per rollout batch, and the check
that both sample the same tokens.

GRPO samples G continuations of every prompt. ``encode_prompt(..., num_samples_per_prompt=G)`` runs the
prompt's prefill once and repeats its KV cache; the baseline gives the prompt G times. The saving grows
with the prompt's length (an input image adds ``(side / (patch · merge))²`` tokens) against the thought's.
A random tiny Qwen3-VL of the given width on the CPU; the median of ``--repeats`` timed runs after a warm-up.

    python benchmarks/shared_prefill.py [--groups 4 8] [--image-side 0 128 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from PIL import Image

from thinkgen.models.mllm import ThinkingConfig, build_prompt
from thinkgen.models.tiny import TinyQwen3VLSpec, build_tiny_mllm

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--groups", type=int, nargs="+", default=[4, 8], help="group sizes G")
parser.add_argument("--image-side", type=int, nargs="+", default=[0, 128, 256],
                    help="input image side per prompt (0: text-only prompt)")
parser.add_argument("--prompts", type=int, default=2, help="prompts per rollout batch")
parser.add_argument("--thinking-tokens", type=int, default=32, help="tokens each rollout generates")
parser.add_argument("--hidden", type=int, default=256, help="width of the random tiny MLLM")
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

spec = TinyQwen3VLSpec(hidden_size=args.hidden, intermediate_size=4 * args.hidden, num_hidden_layers=4,
                       head_dim=args.hidden // 4, max_image_pixels=512 * 512)
mllm = build_tiny_mllm(spec, seed=0)
# A random model rarely closes its thought: every rollout runs the whole budget, so the runs compare alike.
thinking = ThinkingConfig(seed=0, temperature=1.0, top_k=0, top_p=1.0, max_thinking_tokens=args.thinking_tokens,
                          max_instruction_tokens=8, on_missing_think_end="all")
prompts = [f"draw {k + 2} red circles above a blue square next to a green star" for k in range(args.prompts)]


def timed(fn) -> tuple[float, object]:
    fn()  # warm-up
    seconds, out = [], None
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), out


print(f"random tiny Qwen3-VL (D={args.hidden}, 4 layers), {args.prompts} prompts, {args.thinking_tokens} thinking "
      f"tokens, {torch.get_num_threads()} threads; median of {args.repeats}")
print(f"{'image':>6} {'prompt tok':>10} {'G':>3} {'separate s':>10} {'shared s':>9} {'speed-up':>8}  same tokens")
for side in args.image_side:
    images = [[Image.new("RGB", (side, side), (200, 40, 40))] if side else [] for _ in prompts]
    texts = [build_prompt(p, len(row), think=True, system_prompt=mllm.system_prompt) for p, row in zip(prompts, images)]
    length = mllm._processor_inputs(texts, images, padding_side="left")["input_ids"].shape[1]
    for group in args.groups:
        separate_s, separate = timed(lambda: mllm.encode_prompt(
            [p for p in prompts for _ in range(group)], [r for r in images for _ in range(group)],
            think=True, thinking=thinking))
        shared_s, shared = timed(lambda: mllm.encode_prompt(
            prompts, images, think=True, thinking=thinking, num_samples_per_prompt=group))
        same = all(torch.equal(a, b) for a, b in zip(separate.generated_ids, shared.generated_ids))
        print(f"{side:>6} {length:>10} {group:>3} {separate_s:>10.3f} {shared_s:>9.3f} "
              f"{separate_s / shared_s:>7.2f}x  {same}")
