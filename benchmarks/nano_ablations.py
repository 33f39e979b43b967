"""The paper's ablations in miniature: the nano DiT trained from scratch with equal compute per variant.

Each variant runs stage 2 (``recipes/nano/stage2_dit.toml``) for the same steps and batch, changing one
setting of the DiT, then the nano-bench scores it, think and no-think side by side:

* ``shipped``: K = 8 prepadding states, connector over ``cat(hidden_states[-2], hidden_states[-1])``;
* ``prepad0`` / ``prepad23``: K = 0 (no prepadding) / K = 23 (the released count);
* ``last_layer``: the connector reads ``hidden_states[-1]`` alone (``caption_layers = "last"``).

Prepadding adds K context tokens, so compute is equal up to that; each run's wall time is reported.
Short runs score ~0 exact accuracy, so the table also gives the held-out flow-matching loss: the training
loss (velocity MSE, conditioned on the answer's no-think states, edits on their input images) on the
world's val split, at nine fixed times t = 0.1 … 0.9 with fixed noise per sample, the same for every
variant, so differences are the models' own.
Training and evaluation are the project's own commands (``thinkgen train``, ``thinkgen eval nano``), so an
interrupted run resumes where it stopped when the script is run again.

    python benchmarks/nano_ablations.py --steps 1200 --out runs/ablations [--variants shipped prepad0 last_layer]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from thinkgen.imageio import pil_to_tensor
from thinkgen.pipeline import ThinkGenPipeline
from thinkgen.world.scenarios import generate

VARIANTS = {
    "shipped": [],
    "prepad0": ["model.dit.num_prepad_states=0"],
    "prepad23": ["model.dit.num_prepad_states=23"],
    "last_layer": ['model.dit.caption_layers="last"'],
}

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--variants", nargs="+", default=["shipped", "prepad0", "last_layer"], choices=list(VARIANTS))
parser.add_argument("--steps", type=int, default=1200, help="training steps of every variant")
parser.add_argument("--recipe", default="recipes/nano/stage2_dit.toml")
parser.add_argument("--mllm", default="runs/nano/mllm/final/mllm", help="the frozen nano MLLM")
parser.add_argument("--scenarios", nargs="+", default=["composition", "text", "reasoning"])
parser.add_argument("--limit", type=int, default=50, help="nano-bench prompts per scenario")
parser.add_argument("--val-samples", type=int, default=64, help="val samples per scenario for the flow loss")
parser.add_argument("--out", default="runs/ablations")
args = parser.parse_args()
VAL_TIMES = torch.linspace(0.1, 0.9, 9)
VAL_SCENARIOS = ("composition", "text", "reasoning", "edit")


@torch.no_grad()
def val_flow_loss(model_dir: Path) -> float:
    """Mean velocity MSE of the pipeline's DiT on val samples at :data:`VAL_TIMES` (see the module doc)."""
    pipeline = ThinkGenPipeline.from_pretrained(model_dir)
    losses = []
    for scenario in VAL_SCENARIOS:
        for i in range(args.val_samples):
            sample = generate(scenario, i, split="val")
            images = sample.input_images()
            out = pipeline.mllm.encode_prompt([sample.answer], [images], think=False)
            x1 = pipeline.codec.encode(pil_to_tensor([sample.target_image()]).to(pipeline.device)).float()
            x0 = torch.randn(x1.shape, generator=torch.Generator().manual_seed(i))
            t = VAL_TIMES[:, None, None, None]
            count = len(VAL_TIMES)
            refs = pipeline.encode_references([images])[0]
            velocity = pipeline.transformer(
                hidden_states=t * x1 + (1 - t) * x0, timestep=VAL_TIMES,
                text_hidden_states=out.instruction_states.expand(count, -1, -1),
                text_attention_mask=out.instruction_mask.expand(count, -1),
                ref_image_hidden_states=[refs] * count if refs else None,
            ).sample
            losses.append(F.mse_loss(velocity.float(), (x1 - x0).expand(count, -1, -1, -1)).item())
    return sum(losses) / len(losses)


out = Path(args.out)
thinkgen = [sys.executable, "-m", "thinkgen.cli"]
rows = []
for name in args.variants:
    run_dir = out / name
    overrides = [f'run.output_dir="{run_dir}"', f"run.max_steps={args.steps}", f'model.mllm="{args.mllm}"',
                 "run.sample_every=0", f"run.save_every={max(args.steps // 4, 1)}", "data.num_workers=0",
                 *VARIANTS[name]]
    start = time.perf_counter()
    if not (run_dir / "final").exists():
        subprocess.run([*thinkgen, "train", "--recipe", args.recipe, *(x for o in overrides for x in ("--set", o))],
                       check=True, env=os.environ)
    train_minutes = (time.perf_counter() - start) / 60
    subprocess.run([*thinkgen, "eval", "nano", "--model", str(run_dir / "final"), "--out", str(run_dir / "eval"),
                    "--both", "--limit", str(args.limit), "--scenarios", *args.scenarios], check=True, env=os.environ)
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line][-5:]
    row = {"variant": name, "train_minutes_this_call": round(train_minutes, 1),
           "final_train_loss": sum(losses) / max(len(losses), 1), "val_flow_loss": val_flow_loss(run_dir / "final")}
    for mode in ("think", "no_think"):
        summary = results["modes"][mode]["summary"]
        for scenario in args.scenarios:
            row[f"{mode}/{scenario}"] = summary["categories"][scenario]
            row[f"{mode}/credit/{scenario}"] = summary["metrics"][f"clause_credit/{scenario}"]
    rows.append(row)
    with (out / "ablations.jsonl").open("a") as log:
        log.write(json.dumps(row) + "\n")

header = ["variant", "val flow loss", *(f"{m} {s}" for m in ("think", "no-think") for s in args.scenarios)]
print("| " + " | ".join(header) + " |")
print("|" + "---|" * len(header))
for row in rows:
    cells = [row["variant"], f"{row['val_flow_loss']:.4f}"] + [
        f"{row[f'{m}/{s}']:.2f} ({row[f'{m}/credit/{s}']:.2f})" for m in ("think", "no_think") for s in args.scenarios]
    print("| " + " | ".join(cells) + " |")
print("cells: exact accuracy (mean clause credit)")
