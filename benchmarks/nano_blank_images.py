"""How often a nano model draws an empty canvas for a prompt that asks for one object.

Six single-object prompts of the nano world × 8 seeds, no thinking, the model's sampler defaults; an image
counts as blank when under 1 % of its pixels differ from the white background by more than 30 (any
channel). Prints one line per model.

    python benchmarks/nano_blank_images.py --model nano path/to/other/model
"""

from __future__ import annotations

import argparse

import numpy as np

from thinkgen.pipeline import ThinkGenPipeline

PROMPTS = ("one black square", "one pink triangle", "one red circle", "one blue star", "one green square",
           "one yellow circle")
INK_DISTANCE = 30  # a channel this far from white is ink
BLANK_SHARE = 0.01  # an image with less ink than this share of its pixels is blank

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--model", nargs="+", default=["nano"], help="model folders (or 'nano')")
parser.add_argument("--seeds", type=int, default=8, help="seeds per prompt")
args = parser.parse_args()

for model in args.model:
    pipe = ThinkGenPipeline.from_pretrained(model)
    blank = 0
    for seed in range(args.seeds):
        for image in pipe(list(PROMPTS), think=False, seed=seed).images:
            pixels = np.asarray(image.convert("RGB")).astype(int)
            blank += bool((np.abs(pixels - 255).max(axis=-1) > INK_DISTANCE).mean() < BLANK_SHARE)
    print(f"{model}: {blank} blank of {args.seeds * len(PROMPTS)}")
