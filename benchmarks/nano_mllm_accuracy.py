"""How well a nano MLLM thinks: exact instruction match on the world's test split, per scenario.

The MLLM thinks (greedy) on each test prompt, with the input images for edit and reflection samples; its
instruction after ``</think>`` is compared with the world's answer (case and spaces normalised). This
measures the MLLM alone, before any DiT draws.

    python benchmarks/nano_mllm_accuracy.py --mllm runs/nano/mllm/final/mllm [--processor DIR] [-n 20]
"""

from __future__ import annotations

import argparse
import time

import torch

from thinkgen.models.mllm import ThinkGenMLLM, ThinkingConfig
from thinkgen.models.refine import normalise_instruction
from thinkgen.world.scenarios import SCENARIOS, generate

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--mllm", required=True, help="folder of the MLLM weights")
parser.add_argument("--processor", default=None, help="folder of its processor (default: the same)")
parser.add_argument("-n", type=int, default=20, help="test prompts per scenario")
parser.add_argument("--threads", type=int, default=1)
args = parser.parse_args()
torch.set_num_threads(args.threads)

mllm = ThinkGenMLLM.from_pretrained(args.mllm, args.processor)
thinking = ThinkingConfig(temperature=0.0, max_thinking_tokens=96, max_instruction_tokens=48,
                          on_missing_think_end="empty")

print(f"{'scenario':<15} {'exact':>6} {'closed':>7}  example (expected | got)")
start = time.perf_counter()
totals = []
for scenario in SCENARIOS:
    samples = [generate(scenario, i, split="test") for i in range(args.n)]
    out = mllm.encode_prompt([s.instruction for s in samples], [s.input_images() for s in samples],
                             think=True, thinking=thinking)
    exact = [normalise_instruction(got) == normalise_instruction(s.answer) for got, s in zip(out.instruction, samples)]
    closed = out.is_thought_closed.float().mean().item()
    miss = next((k for k, ok in enumerate(exact) if not ok), 0)
    totals.append(sum(exact) / len(exact))
    print(f"{scenario:<15} {totals[-1]:>6.2f} {closed:>7.2f}  {samples[miss].answer!r} | {out.instruction[miss]!r}")
print(f"mean {sum(totals) / len(totals):.3f} over {len(SCENARIOS)} scenarios, {time.perf_counter() - start:.0f} s")
