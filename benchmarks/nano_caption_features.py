"""Which MLLM states should the nano DiT read: the last two layers (the released design), or the token
embeddings with the last layer?

In the nano MLLM (4 decoder layers) a token's own identity fades with depth: at the count token of
``two red circles`` against ``three red circles`` the RMS-normalised states differ by 1.07 in the
embeddings, then 0.56, 0.37, 0.13, 0.12 after layers 1–4, and shape tokens fade alike (``--probe``
prints this). The DiT reads the last two, and most of its composition errors are objects of the wrong
kind or number.

Arms, each stage 2 from scratch (``recipes/nano/stage2_dit.toml``) for the same steps and batch, trained
side by side, one thread each:

* ``last_two``: the connector reads ``cat(hidden_states[-2], hidden_states[-1])`` (the shipped design);
* ``embedding_and_last``: ``cat(rms_normalise(hidden_states[0]), hidden_states[-1])``, at the same
  shapes and compute (the DiT's ``caption_layers = "embedding_and_last"``, which the pipeline and the
  trainer pass on to the MLLM).

With ``--init DIT``, both arms continue from a trained DiT instead (``--mllm`` then names the MLLM whose
states that DiT was trained on, with its processor; the ``embedding_and_last`` arm starts from a copy whose
config reads the new layout), which asks whether the embeddings still pay off on top of a DiT trained long
on the released pair.

Each arm reports the held-out flow loss (:func:`nano_common.val_flow_loss`) and the nano-bench (think and
no-think, ``--limit`` test prompts per scenario).

    python benchmarks/nano_caption_features.py --steps 1500 --out runs/caption_features
    # runs/shipped/mllm: the shipped pipeline's mllm/ and processor/ copied into one folder
    python benchmarks/nano_caption_features.py --steps 2500 --init src/thinkgen/assets/thinkgen-nano/transformer \
        --mllm runs/shipped/mllm --limit 100 --out runs/caption_features_continued
    python benchmarks/nano_caption_features.py --probe
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from nano_common import val_flow_loss
from thinkgen.cli import main as thinkgen
from thinkgen.models.mllm import ThinkGenMLLM, build_prompt
from thinkgen.pipeline import ThinkGenPipeline

ARMS = ("last_two", "embedding_and_last")
SCENARIOS = ("composition", "text", "reasoning", "edit")

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
parser.add_argument("--arm", choices=ARMS, help="(internal) train and score one arm in this process")
parser.add_argument("--probe", action="store_true", help="print how much states tell tokens apart, per layer")
parser.add_argument("--steps", type=int, default=1500)
parser.add_argument("--recipe", default="recipes/nano/stage2_dit.toml")
parser.add_argument("--mllm", default="checkpoints/nano-mllm", help="the frozen MLLM (a folder with its processor)")
parser.add_argument("--init", default="", help="a trained DiT folder both arms start from (default: new DiTs)")
parser.add_argument("--limit", type=int, default=50, help="nano-bench test prompts per scenario")
parser.add_argument("--val-samples", type=int, default=32, help="val samples per scenario for the flow loss")
parser.add_argument("--out", default="runs/caption_features")
args = parser.parse_args()


@torch.no_grad()
def probe() -> None:
    """RMS-normalised distance between the states of two prompts at the first token where they differ
    (its second copy, in the no-think template's instruction), per layer."""
    mllm = ThinkGenMLLM.from_pretrained(args.mllm)
    pairs = [("two red circles", "three red circles"), ("one red circle", "one blue circle"),
             ("one red circle", "one red square"), ('the word "cat"', 'the word "dog"')]

    def states(prompt: str) -> tuple[list[torch.Tensor], list[str]]:
        text = build_prompt(prompt, 0, think=False, system_prompt=mllm.system_prompt)
        inputs = mllm._processor_inputs([text], [[]], padding_side="right")
        hidden = mllm.model(**inputs, output_hidden_states=True).hidden_states
        return [h[0] for h in hidden], mllm.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])

    def distance(x: torch.Tensor, y: torch.Tensor) -> float:
        norm = lambda v: v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True))  # noqa: E731
        return float((norm(x) - norm(y)).pow(2).mean().sqrt())

    print("| prompts | token | " + " | ".join(["embeddings", *(f"layer {i}" for i in range(1, 5))]) + " |")
    for a, b in pairs:
        (ha, ta), (hb, tb) = states(a), states(b)
        i = [k for k in range(min(len(ta), len(tb))) if ta[k] != tb[k]][-1]
        print(f"| {a} / {b} | {ta[i]} / {tb[i]} | " + " | ".join(f"{distance(x[i], y[i]):.2f}"
                                                              for x, y in zip(ha, hb)) + " |")


def initial_dit(arm: str, run_dir: Path) -> Path:
    """``--init``, or for ``embedding_and_last`` a copy of it whose config reads that layout."""
    if arm == "last_two":
        return Path(args.init)
    folder = run_dir / "init"
    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((Path(args.init) / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "caption_layers": arm}, indent=2))
    shutil.copy(Path(args.init) / "diffusion_pytorch_model.safetensors", folder)
    return folder


def run_arm(arm: str) -> None:
    run_dir = Path(args.out) / arm
    overrides = [f'run.output_dir="{run_dir}"', f"run.max_steps={args.steps}", f'model.mllm="{args.mllm}"',
                 "run.sample_every=0", f"run.save_every={max(args.steps // 4, 1)}", "data.num_workers=0"]
    if args.init:
        overrides += [f'model.transformer="{initial_dit(arm, run_dir)}"', "model.dit={}"]
    else:
        overrides.append(f'model.dit.caption_layers="{arm}"')
    if not (run_dir / "final").exists():
        if thinkgen(["train", "--recipe", args.recipe, *(x for o in overrides for x in ("--set", o))]):
            raise SystemExit(f"training {arm} failed")
    if thinkgen(["eval", "nano", "--model", str(run_dir / "final"), "--out", str(run_dir / "eval"), "--both",
                 "--limit", str(args.limit), "--scenarios", *SCENARIOS]):
        raise SystemExit(f"scoring {arm} failed")
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    row = {"arm": arm, "steps": args.steps,
           "val_flow_loss": val_flow_loss(ThinkGenPipeline.from_pretrained(run_dir / "final"), args.val_samples)}
    for mode in ("think", "no_think"):
        summary = results["modes"][mode]["summary"]
        for scenario in SCENARIOS:
            row[f"{mode}/{scenario}"] = summary["categories"][scenario]
            row[f"{mode}/credit/{scenario}"] = summary["metrics"][f"clause_credit/{scenario}"]
    (run_dir / "row.json").write_text(json.dumps(row, indent=2))


if args.probe:
    probe()
elif args.arm:
    run_arm(args.arm)
else:
    Path(args.out).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    children = []
    for arm in args.arms:
        log = open(Path(args.out) / f"{arm}.log", "a")  # noqa: SIM115 - the child writes it until it exits
        children.append((arm, subprocess.Popen([sys.executable, __file__, "--arm", arm, *sys.argv[1:]],
                                               env=env, stdout=log, stderr=log)))
    for arm, child in children:
        if child.wait() != 0:
            raise SystemExit(f"arm {arm} failed; see {Path(args.out) / f'{arm}.log'}")
    rows = [json.loads((Path(args.out) / arm / "row.json").read_text()) for arm in args.arms]
    header = ["arm", "val flow loss", *(f"{m} {s}" for m in ("think", "no-think") for s in SCENARIOS)]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [row["arm"], f"{row['val_flow_loss']:.4f}"] + [
            f"{row[f'{m}/{s}']:.2f} ({row[f'{m}/credit/{s}']:.2f})" for m in ("think", "no_think") for s in SCENARIOS]
        print("| " + " | ".join(cells) + " |")
    print("cells: exact accuracy (mean clause credit)")
