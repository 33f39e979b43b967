"""Text rendering: what signal lets the nano DiT write the word it is asked for?

Each arm trains stage 2 from scratch on the world's text-rendering samples only, for the same steps and
batch, and is then scored on the test split with the answer as the oracle instruction (no-think):

* ``words8``: the world writes only 8 words (a patched vocabulary);
* ``words``: the nano world's whole vocabulary (466 words);
* ``spelled``: the whole vocabulary, each quoted word of the answer spelled one letter per token
  (``"r-a-m"``), so drawing a word could be copying letters in order;
* ``glyph``: the whole vocabulary, and each sample is an edit whose input image shows the target's words
  alone, at the target's layout (a glyph reference through the DiT's reference-image path).

Scores per arm: the word swap ratio (flow loss on the val image with the quoted word swapped for another
of its length, over the loss with the true word: 1.00 means the DiT ignores the word;
:func:`nano_common.sample_flow_loss`) and the share of ``--limit`` test prompts whose words the world
judge reads, with and without the glyph reference for the ``glyph`` arm. The arms run one after another,
each in its own process (the patches stay there).

    python benchmarks/nano_text_signal.py --steps 1500 --out runs/text_signal
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

ARMS = ("words8", "words", "spelled", "glyph")
EIGHT_WORDS = ("art", "yard", "heat", "zip", "duck", "bath", "cat", "sun")
QUOTED_WORD = re.compile(r'"([a-z]+)"')

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
parser.add_argument("--steps", type=int, default=1500, help="training steps of every arm (batch 32)")
parser.add_argument("--limit", type=int, default=100, help="test prompts scored per arm")
parser.add_argument("--swap-samples", type=int, default=40, help="val samples of the word swap ratio")
parser.add_argument("--mllm", default="checkpoints/nano-mllm", help="the frozen MLLM of stage 2")
parser.add_argument("--codec", default="src/thinkgen/assets/thinkgen-nano/vae")
parser.add_argument("--out", type=Path, default=Path("runs/text_signal"))
parser.add_argument("--run-arm", choices=ARMS, help=argparse.SUPPRESS)  # internal: one arm in this process
args = parser.parse_args()


def spell(text: str) -> str:
    """``the word "ram"`` → ``the word "r-a-m"``."""
    return QUOTED_WORD.sub(lambda m: '"' + "-".join(m.group(1)) + '"', text)


def patch_world(arm: str):
    """Patch this process's world for ``arm``; return ``form(sample) -> sample`` as the trainer sees it."""
    import thinkgen.train.data as train_data
    import thinkgen.world.vocab as vocab
    from thinkgen.world.scene import Scene

    if arm == "words8":
        vocab.WORDS = EIGHT_WORDS

    def form(sample):
        if arm == "spelled":
            return dataclasses.replace(sample, answer=spell(sample.answer))
        if arm == "glyph":
            return dataclasses.replace(sample, task_type="edit", inputs=(Scene(words=sample.target.words),))
        return sample

    generate = train_data.generate
    train_data.generate = lambda *a, **k: form(generate(*a, **k))
    return form


def run_arm(arm: str) -> dict:
    import torch

    from nano_common import sample_flow_loss, swapped_answer
    from thinkgen.cli import main
    from thinkgen.pipeline import ThinkGenPipeline
    from thinkgen.world.detect import DetectorConfig, WorldDetector
    from thinkgen.world.scenarios import generate
    from thinkgen.world.scene import get_preset
    from thinkgen.world.score import score_spec

    torch.set_num_threads(1)
    form = patch_world(arm)
    run_dir = args.out / arm
    overrides = [
        f'model.mllm="{args.mllm}"', f'model.codec="{args.codec}"', f'run.output_dir="{run_dir}"',
        f"run.max_steps={args.steps}", "run.sample_every=0", "run.save_every=500",
        'data.sources.0.scenarios=["text"]', "data.num_workers=0",
    ]
    if not (run_dir / "final").is_dir():
        flags = [x for o in overrides for x in ("--set", o)]
        code = main(["train", "--recipe", "recipes/nano/stage2_dit.toml", *flags])
        if code:
            raise SystemExit(code)
    pipeline = ThinkGenPipeline.from_pretrained(run_dir / "final")
    world = get_preset("nano")

    rng = random.Random(0)
    own = swapped = 0.0
    for i in range(args.swap_samples):
        original = generate("text", i, config=world, split="val")
        sample = form(original)
        # Swap in the world's own answer, then put it in the arm's form (a spelled answer has no "word" to swap).
        other = form(dataclasses.replace(original, answer=swapped_answer("word", original.answer, world, rng)))
        own += sample_flow_loss(pipeline, sample, i)
        swapped += sample_flow_loss(pipeline, sample, i, answer=other.answer)

    detector = WorldDetector(DetectorConfig.for_world(world))
    read = {"no reference": 0}
    if arm == "glyph":
        read["glyph reference"] = 0
    for first in range(0, args.limit, 4):
        samples = [generate("text", i, config=world, split="test") for i in range(first, min(first + 4, args.limit))]
        for condition in read:
            refs = [form(s).input_images() for s in samples] if condition == "glyph reference" else None
            drawn = pipeline([form(s).answer for s in samples], images=refs, think=False, seed=first).images
            for sample, image in zip(samples, drawn):
                words_only = dataclasses.replace(sample.spec, include=[], exclude=[])
                read[condition] += score_spec(image, words_only, detector).correct
    return {"arm": arm, "steps": args.steps, "word_swap_ratio": swapped / own,
            **{f"words_read/{k}": v / args.limit for k, v in read.items()}}


if args.run_arm:
    print(json.dumps(run_arm(args.run_arm)), flush=True)
    sys.exit(0)

args.out.mkdir(parents=True, exist_ok=True)
env = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
rows = []
for arm in args.arms:
    command = [sys.executable, __file__, "--run-arm", arm, "--steps", str(args.steps), "--limit", str(args.limit),
               "--swap-samples", str(args.swap_samples), "--mllm", args.mllm, "--codec", args.codec,
               "--out", str(args.out)]
    with open(args.out / f"{arm}.log", "w") as log:
        result = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=log, text=True, check=True)
    rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    print(json.dumps(rows[-1]), flush=True)
(args.out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
print(f"\n{'arm':<9} {'word swap':>9} {'read':>6} {'read, glyph ref':>16}")
for r in rows:
    glyph = r.get("words_read/glyph reference")
    print(f"{r['arm']:<9} {r['word_swap_ratio']:>9.3f} {r['words_read/no reference']:>6.2f} "
          f"{'' if glyph is None else f'{glyph:.2f}':>16}")
