"""Seconds per RL step of MLLM-GRPO and DiT-GRPO, split into rollout / reward / update, at G = 4 and 8,
with rewards scored in the loop and in worker threads, and the rollout throughput: reasoning tokens/s
(thinking, shared prefill), images/s, reward items/s.

A tiny random pipeline on the CPU (the MLLM of ``models/tiny.py``, a one-block DiT over pixels), so the
numbers measure the loops' own costs and how they scale with the group size, not a trained model. The
rule reward is the world judge; each stage runs ``--steps`` RL steps, the first is dropped as warm-up and
the median of the rest is reported.

    python benchmarks/rl_step_time.py [--steps 4] [--prompts 2] [--size 32] [--threads 1]

On a busy machine pass ``--threads 1``: tiny models gain nothing from more threads, and threads that
contend with other work made every step 5-30x slower in our runs.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import tempfile
from pathlib import Path

import torch

from thinkgen.rl import dit_grpo, mllm_grpo
from thinkgen.rl.common import load_pipeline
from thinkgen.rl.config import (
    DiTGRPOConfig,
    DiTGRPOParams,
    DiTRLTrainConfig,
    MLLMGRPOConfig,
    MLLMGRPOParams,
    PromptConfig,
    RLModelConfig,
    RLTrainConfig,
    RolloutSampleConfig,
)
from thinkgen.train.config import RunConfig

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=4, help="RL steps per measurement (the first is warm-up)")
parser.add_argument("--prompts", type=int, default=2, help="prompts per RL step")
parser.add_argument("--groups", type=int, nargs="+", default=[4, 8], help="group sizes G")
parser.add_argument("--size", type=int, default=32, help="image side in pixels")
parser.add_argument("--reward-workers", type=int, nargs="+", default=[0, 2],
                    help="reward scoring threads to compare (0: scored in the loop)")
parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
logging.getLogger("thinkgen").setLevel(logging.WARNING)

prompts = PromptConfig(scenarios={"composition": 1.0, "text": 1.0}, prompts_per_step=args.prompts)
rewards = {"composition": {"world": 1.0}, "text": {"ocr": 1.0}}
sample = RolloutSampleConfig(image_size=args.size, num_inference_steps=8, guidance_scale=2.0)


def run_config(folder: str) -> RunConfig:
    return RunConfig(output_dir=folder, max_steps=args.steps, log_every=args.steps, save_every=0,
                     use_tensorboard=False, resume=False)


def median_split(history: list[dict[str, float]]) -> dict[str, float]:
    timed = history[1:] or history
    split = {k: statistics.median(h[k] for h in timed) for k in ("rollout_s", "reward_s", "train_s")}
    return {**split, "step_s": sum(split.values())}


print(f"tiny pipeline, {args.size}x{args.size}, {args.prompts} prompts/step, {torch.get_num_threads()} threads; "
      f"median of {max(args.steps - 1, 1)} steps")
print("reward s: the reward's time on the loop's critical path (with workers, what is not hidden)")
print(f"{'stage':<10} {'G':>3} {'workers':>7} {'step s':>7} {'rollout s':>9} {'reward s':>8} {'update s':>8}   detail")
for group, workers in itertools.product(args.groups, args.reward_workers):
    with tempfile.TemporaryDirectory() as tmp:
        config = MLLMGRPOConfig(
            run=run_config(str(Path(tmp) / "mllm")), model=RLModelConfig(), prompts=prompts, rewards=rewards,
            sample=sample, grpo=MLLMGRPOParams(num_generations=group, micro_batch_size=group,
                                               max_thinking_tokens=16, max_instruction_tokens=8),
            train=RLTrainConfig(reward_workers=workers),
        )
        result = mllm_grpo.train(config, pipeline=load_pipeline(config.model, seed=0))
        split = median_split(result.history)
        timed = result.history[1:] or result.history
        tokens = statistics.median(h["completion_tokens"] for h in timed)
        rows = args.prompts * group
        think_s = statistics.median(h["think_s"] for h in timed)
        draw_s = statistics.median(h["draw_s"] for h in timed)
        print(f"{'mllm_grpo':<10} {group:>3} {workers:>7} {split['step_s']:>7.2f} {split['rollout_s']:>9.2f} "
              f"{split['reward_s']:>8.2f} {split['train_s']:>8.2f}   {tokens:.0f} tokens/rollout, 8 ODE steps; "
              f"think {tokens * rows / think_s:.0f} tokens/s, draw {rows / draw_s:.1f} images/s, "
              f"reward {rows / max(split['reward_s'], 1e-9):.0f} items/s on the critical path")

        config = DiTGRPOConfig(
            run=run_config(str(Path(tmp) / "dit")), model=RLModelConfig(), prompts=prompts, rewards=rewards,
            sample=sample, grpo=DiTGRPOParams(num_generations=group, micro_batch_size=group, timestep_fraction=0.5),
            train=DiTRLTrainConfig(reward_workers=workers),
        )
        result = dit_grpo.train(config, pipeline=load_pipeline(config.model, seed=0))
        split = median_split(result.history)
        print(f"{'dit_grpo':<10} {group:>3} {workers:>7} {split['step_s']:>7.2f} {split['rollout_s']:>9.2f} "
              f"{split['reward_s']:>8.2f} {split['train_s']:>8.2f}   8 SDE steps, 4 trained, CFG 2; "
              f"rollout {args.prompts * group / split['rollout_s']:.1f} images/s, "
              f"reward {args.prompts * group / max(split['reward_s'], 1e-9):.0f} items/s on the critical path")
