"""How much a GRPO group explores: G sampled thoughts per prompt from a nano MLLM, at several temperatures.

In MLLM-GRPO the frozen DiT draws every rollout of a group from the same noise, so a group can only have a
non-zero advantage when its G instructions differ. For each scenario and temperature this reports, over
``-n`` prompts of a split, the distinct instructions per group, the share of groups that mix right and
wrong instructions (against the world's answer: the groups that carry a learning signal about the
instruction), and the share of right instructions. ``--split test`` adds the same split into prompts whose
facts the train split has (``seen``) and prompts asking for a fact held out of it (``held_out``; a test
prompt that only draws a held-out colour and shape pair counts as seen, its instruction is known).

    python benchmarks/nano_group_diversity.py --mllm checkpoints/nano-mllm --split train \
        --scenarios reasoning composition --temperatures 1 1.5 2 3
"""

from __future__ import annotations

import argparse

import torch

from thinkgen.models.mllm import ThinkGenMLLM, ThinkingConfig
from thinkgen.models.refine import normalise_instruction
from thinkgen.world.knowledge import asks_held_out_fact
from thinkgen.world.scenarios import SCENARIOS, generate

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--mllm", required=True, help="folder of the MLLM weights")
parser.add_argument("--processor", default=None, help="folder of its processor (default: the same)")
parser.add_argument("--split", default="train", choices=["train", "val", "test"])
parser.add_argument("--seed", type=int, default=1, help="world seed of the prompts (stage 4's: 1)")
parser.add_argument("--scenarios", nargs="+", default=["reasoning", "composition"], choices=SCENARIOS)
parser.add_argument("--temperatures", nargs="+", type=float, default=[1.0, 1.5, 2.0, 3.0])
parser.add_argument("-n", type=int, default=24, help="prompts per scenario")
parser.add_argument("-g", "--group-size", type=int, default=8)
parser.add_argument("--threads", type=int, default=1)
args = parser.parse_args()
torch.set_num_threads(args.threads)

mllm = ThinkGenMLLM.from_pretrained(args.mllm, args.processor)


print("| scenario | prompts | T | distinct / group | mixed groups | right |")
print("|---|---|---|---|---|---|")
for scenario in args.scenarios:
    samples = [generate(scenario, i, seed=args.seed, split=args.split) for i in range(args.n)]
    subsets = {"all": samples}
    if args.split != "train":
        unseen = [asks_held_out_fact(s.meta.get("facts", ())) for s in samples]
        subsets["seen"] = [s for s, u in zip(samples, unseen) if not u]
        subsets["held_out"] = [s for s, u in zip(samples, unseen) if u]
    for temperature in args.temperatures:
        stats = {}
        for k, sample in enumerate(samples):
            thinking = ThinkingConfig(temperature=temperature, max_thinking_tokens=64, max_instruction_tokens=32,
                                      on_missing_think_end="empty", seed=k)
            out = mllm.encode_prompt([sample.instruction], [sample.input_images()], think=True, thinking=thinking,
                                     num_samples_per_prompt=args.group_size)
            right = [normalise_instruction(got) == normalise_instruction(sample.answer) for got in out.instruction]
            stats[id(sample)] = (len({normalise_instruction(got) for got in out.instruction}),
                                 0 < sum(right) < len(right), sum(right) / len(right))
        for name, subset in subsets.items():
            if not subset:
                continue
            rows = [stats[id(s)] for s in subset]
            print(f"| {scenario} | {name} ({len(rows)}) | {temperature:g} | {sum(r[0] for r in rows) / len(rows):.2f} "
                  f"| {sum(r[1] for r in rows) / len(rows):.2f} | {sum(r[2] for r in rows) / len(rows):.2f} |",
                  flush=True)
