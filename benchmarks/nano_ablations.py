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

from nano_common import val_flow_loss
from thinkgen.pipeline import ThinkGenPipeline

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
           "final_train_loss": sum(losses) / max(len(losses), 1),
           "val_flow_loss": val_flow_loss(ThinkGenPipeline.from_pretrained(run_dir / "final"), args.val_samples)}
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
