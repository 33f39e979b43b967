"""Text rendering: does spelling a word out, one token per letter, help the nano DiT write it?

The nano tokenizer's BPE cuts a world word into pieces (``"ram"`` → ``ra`` ``m``, ``"elephant"`` → ``e``
``le`` ``p`` ``h`` ``ant``), so to draw a word the DiT must learn the spelling of every piece. Spelled
(``"r-a-m"``: one letter token per glyph), drawing a word becomes copying letters in order.

Arms, each fine-tuning the shipped DiT for the same steps and batch on text-rendering samples only (the
world's train split, pre-rendered to JSONL + PNG, trained with ``thinkgen train``):

* ``word``: conditioned on the answer as the MLLM writes it (``the word "ram"``);
* ``spelled``: the same samples, each quoted word spelled (``the word "r-a-m"``).

Each model, and the shipped DiT unchanged, is scored with oracle conditioning: the no-think states of
the test sample's answer in the model's own form, so the MLLM's instruction plays no part. Scores are
the world judge's on ``--limit`` test-split text prompts (one image each): word accuracy (words read
exactly), NED (1 − normalised edit distance to the best-matching read word) and exact accuracy (every
clause of the spec, objects included). The arms train side by side, one thread each.

    python benchmarks/nano_text_conditioning.py --steps 800 --out runs/text_conditioning
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from thinkgen.models.mllm import ThinkGenMLLM
from thinkgen.pipeline import ThinkGenPipeline, load_transformer, resolve_model_path
from thinkgen.world.detect import DetectorConfig, WorldDetector
from thinkgen.world.scenarios import generate
from thinkgen.world.scene import get_preset
from thinkgen.world.score import score_spec

QUOTED_WORD = re.compile(r'"([a-z]+)"')


def spell(text: str) -> str:
    """``the word "ram"`` → ``the word "r-a-m"``: each quoted word one token per letter."""
    return QUOTED_WORD.sub(lambda m: '"' + "-".join(m.group(1)) + '"', text)


FORMS = {"word": lambda text: text, "spelled": spell}

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--arms", nargs="+", default=list(FORMS), choices=list(FORMS))
parser.add_argument("--steps", type=int, default=800, help="fine-tuning steps of every arm (batch 32)")
parser.add_argument("--train-samples", type=int, default=20000, help="distinct train samples rendered")
parser.add_argument("--recipe", default="recipes/nano/stage3_finetune.toml")
parser.add_argument("--model", default="nano", help="the pipeline whose DiT the arms start from")
parser.add_argument("--mllm", default="checkpoints/nano-mllm", help="the frozen MLLM of the DiT's stages 2-3")
parser.add_argument("--lr", type=float, default=2e-4)
parser.add_argument("--limit", type=int, default=100, help="test text prompts scored per model")
parser.add_argument("--out", default="runs/text_conditioning")
args = parser.parse_args()

out = Path(args.out)
model_dir = resolve_model_path(args.model)


def write_data(form: str) -> Path:
    """The train samples as JSONL + PNG, the DiT's prompt (``instruction``) in ``form``."""
    folder = out / "data" / form
    jsonl = folder / "train.jsonl"
    if jsonl.exists():
        return jsonl
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(args.train_samples):
        sample = generate("text", i, split="train", seed=11)
        name = f"images/{i:06d}.png"
        sample.target_image().save(folder / name)
        lines.append(json.dumps({"task_type": "t2i", "instruction": FORMS[form](sample.answer),
                                 "input_images": [], "output_image": name}))
    tmp = jsonl.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(jsonl)
    return jsonl


def train(form: str) -> subprocess.Popen | None:
    run_dir = out / form
    if (run_dir / "final").exists():
        return None
    source = f'[{{name = "text-{form}", kind = "jsonl", path = "{write_data(form)}", weight = 1.0}}]'
    overrides = [f'run.output_dir="{run_dir}"', f"run.max_steps={args.steps}", "run.sample_every=0",
                 f"run.save_every={max(args.steps // 4, 1)}", f'model.mllm="{args.mllm}"',
                 f'model.transformer="{model_dir / "transformer"}"', f'model.codec="{model_dir / "vae"}"',
                 f"data.sources={source}", 'data.prompt_field="instruction"', "data.num_workers=0",
                 f"optim.lr={args.lr}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(out / f"{form}.log", "a")  # noqa: SIM115 - the child writes it until it exits
    return subprocess.Popen([sys.executable, "-m", "thinkgen.cli", "train", "--recipe", args.recipe,
                             *(x for o in overrides for x in ("--set", o))], env=env, stdout=log, stderr=log)


@torch.no_grad()
def score(pipeline: ThinkGenPipeline, form: str) -> dict[str, float]:
    detector = WorldDetector(DetectorConfig.for_world(get_preset("nano"), read_words=True))
    exact = words = ned = 0.0
    for i in range(args.limit):
        sample = generate("text", i, split="test")
        image = pipeline(FORMS[form](sample.answer), think=False, seed=i).images[0]
        result = score_spec(image, sample.spec, detector)
        exact += result.correct
        words += result.text.word_accuracy
        ned += result.text.ned
    return {"word_accuracy": words / args.limit, "ned": ned / args.limit, "exact": exact / args.limit}


out.mkdir(parents=True, exist_ok=True)
start = time.perf_counter()
children = [(form, train(form)) for form in args.arms]
for form, child in children:
    if child is not None and child.wait() != 0:
        raise SystemExit(f"arm {form} failed; see {out / f'{form}.log'}")
train_minutes = (time.perf_counter() - start) / 60

pipeline = ThinkGenPipeline.from_pretrained(model_dir)
pipeline.mllm = ThinkGenMLLM.from_pretrained(args.mllm)
rows = {f"shipped DiT, {form} conditioning": score(pipeline, form) for form in FORMS}
for form in args.arms:
    pipeline.transformer = load_transformer(out / form / "final" / "transformer")
    rows[f"+{args.steps} text steps, {form} conditioning"] = score(pipeline, form)
(out / "results.json").write_text(json.dumps({"steps": args.steps, "limit": args.limit,
                                              "train_minutes_all_arms": train_minutes, "rows": rows}, indent=2))
print(f"text rendering, {args.limit} test prompts, oracle conditioning; arms trained side by side in "
      f"{train_minutes:.0f} min")
print("| model | word accuracy | NED | exact |")
print("|---|---|---|---|")
for name, r in rows.items():
    print(f"| {name} | {r['word_accuracy']:.2f} | {r['ned']:.2f} | {r['exact']:.2f} |")
