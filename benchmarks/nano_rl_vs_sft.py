"""RL against supervised fine-tuning on the same reasoning data (the paper: WISE 0.74 with MLLM-GRPO, 0.58
with SFT on the same data), in miniature on the nano model.

Both arms start from the same supervised pipeline, keep its DiT frozen and train only the MLLM, on the same
prompts in the same order (the world's reasoning scenario, train split, stage 4's prompt seed), for the same
number of optimizer steps at the same learning rate:

* ``rl``: MLLM-GRPO (``recipes/nano/stage4_mllm_grpo.toml`` with a reasoning-only mix): G sampled thoughts
  per prompt, each drawn by the frozen DiT and scored by the world judge;
* ``sft``: MLLM SFT (``recipes/nano/mllm.toml`` from the pipeline's MLLM) on the world's gold thought and
  instruction of each of those prompts, a batch of ``--prompts-per-step`` per step.

Each arm, and the starting model, is then scored on the held-out test split: the nano-bench's reasoning
accuracy with and without thinking (the world judge on the drawn image), and the MLLM's exact-instruction
accuracy on the same prompts (the instruction it wrote after ``</think>`` against the world's answer),
which separates what the MLLM learned from what the DiT can draw. The think-mode accuracy is also split
between test prompts whose facts the train split has and those asking for a held-out fact, which no arm
sees (the nano-bench's ``accuracy/known_facts/reasoning`` and ``accuracy/held_out_facts/reasoning``).
Training and evaluation are the project's own commands, so an interrupted run resumes where it stopped when
the script is run again.

    python benchmarks/nano_rl_vs_sft.py --pipeline runs/nano/stage3/final --mllm checkpoints/nano-mllm \
        --steps 40 --out runs/rl_vs_sft
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from thinkgen.eval.nano import load_nano
from thinkgen.models.refine import normalise_instruction

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--pipeline", required=True, help="the supervised pipeline both arms start from")
parser.add_argument("--mllm", required=True,
                    help="its MLLM as a folder with the processor files (the SFT arm's init)")
parser.add_argument("--steps", type=int, default=40, help="optimizer steps of each arm")
parser.add_argument("--prompts-per-step", type=int, default=8)
parser.add_argument("--lr", type=float, default=5e-5, help="learning rate of both arms (stage 4's)")
parser.add_argument("--prompt-seed", type=int, default=1, help="seed of the reasoning prompt stream (stage 4's)")
parser.add_argument("--temperature", type=float, default=1.0,
                    help="sampling temperature of the RL arm's rollouts (stage 4's: 1.0)")
parser.add_argument("--limit", type=int, default=100, help="test prompts scored")
parser.add_argument("--arms", nargs="+", default=["supervised", "rl", "sft"], choices=["supervised", "rl", "sft"])
parser.add_argument("--out", default="runs/rl_vs_sft")
args = parser.parse_args()

out = Path(args.out)
thinkgen = [sys.executable, "-m", "thinkgen.cli"]


def train(recipe: str, overrides: list[str]) -> None:
    subprocess.run([*thinkgen, "train", "--recipe", recipe, *(x for o in overrides for x in ("--set", o))],
                   check=True, env=os.environ)


def same_schedule(run_dir: Path) -> list[str]:
    return [f'run.output_dir="{run_dir}"', f"run.max_steps={args.steps}", f"run.save_every={max(args.steps // 4, 1)}",
            f"optim.lr={args.lr}", "optim.schedule=\"constant\"", "optim.warmup_steps=10"]


def rl_arm() -> Path:
    run_dir = out / "rl"
    if not (run_dir / "final").exists():
        train("recipes/nano/stage4_mllm_grpo.toml", [
            *same_schedule(run_dir), f'model.pipeline="{args.pipeline}"', "prompts.scenarios={reasoning=1.0}",
            f"prompts.seed={args.prompt_seed}", f"prompts.prompts_per_step={args.prompts_per_step}",
            f"grpo.temperature={args.temperature}", "eval.every=0", "eval.keep_best=false"])
    return run_dir / "final"


def sft_arm() -> Path:
    run_dir = out / "sft"
    pipeline_dir = run_dir / "pipeline"
    if not (run_dir / "final").exists():
        train("recipes/nano/mllm.toml", [
            *same_schedule(run_dir), f'model.init="{args.mllm}"', "model.tiny={}", "optim.min_lr_ratio=1.0",
            f"data.global_batch_size={args.prompts_per_step}", f"data.micro_batch_size={args.prompts_per_step}",
            "data.num_workers=0", 'data.sources.0.scenarios=["reasoning"]', f"data.sources.0.seed={args.prompt_seed}"])
    if not pipeline_dir.exists():
        # The starting pipeline with its MLLM replaced: the same DiT, codec and processor.
        staging = run_dir / "pipeline.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(args.pipeline, staging, ignore=shutil.ignore_patterns("mllm"))
        shutil.copytree(run_dir / "final" / "mllm", staging / "mllm")
        staging.rename(pipeline_dir)
    return pipeline_dir


# The test prompts every arm is scored on, by key (for the exact-instruction check).
TEST_ITEMS = {item.key: item for item in load_nano(args.limit, ["reasoning"])}


def instruction_accuracy(eval_dir: Path) -> float:
    """Share of the think-mode test prompts whose instruction equals the world's answer."""
    rows = [json.loads(line) for line in (eval_dir / "think" / "manifest.jsonl").read_text().splitlines()]
    right = [normalise_instruction(r["instruction"]) == normalise_instruction(TEST_ITEMS[r["key"]].meta["answer"])
             for r in rows]
    return sum(right) / len(rows)


models = {"supervised": lambda: Path(args.pipeline), "rl": rl_arm, "sft": sft_arm}
rows = []
for arm in args.arms:
    model_dir = models[arm]()
    eval_dir = out / "eval" / arm
    subprocess.run([*thinkgen, "eval", "nano", "--model", str(model_dir), "--out", str(eval_dir), "--both",
                    "--limit", str(args.limit), "--scenarios", "reasoning"], check=True, env=os.environ)
    results = json.loads((eval_dir / "results.json").read_text())["modes"]
    row = {"arm": arm, "think": results["think"]["summary"]["categories"]["reasoning"],
           "no_think": results["no_think"]["summary"]["categories"]["reasoning"],
           "think_credit": results["think"]["summary"]["metrics"]["clause_credit/reasoning"],
           "instruction_exact": instruction_accuracy(eval_dir)}
    # Split by whether a prompt asks for a fact held out of training (no arm sees those, so only the
    # known-fact share can move).
    metrics = results["think"]["summary"]["metrics"]
    row["think_known_facts"] = metrics["accuracy/known_facts/reasoning"]
    row["think_held_out_facts"] = metrics["accuracy/held_out_facts/reasoning"]
    rows.append(row)
    with (out / "rl_vs_sft.jsonl").open("a") as log:
        log.write(json.dumps(row) + "\n")

print("| arm | reasoning, think | known facts, think | held-out facts, think | reasoning, no-think "
      "| clause credit, think | exact instruction |")
print("|---|---|---|---|---|---|---|")
for row in rows:
    print(f"| {row['arm']} | {row['think']:.2f} | {row['think_known_facts']:.2f} | {row['think_held_out_facts']:.2f} "
          f"| {row['no_think']:.2f} | {row['think_credit']:.3f} | {row['instruction_exact']:.2f} |")
