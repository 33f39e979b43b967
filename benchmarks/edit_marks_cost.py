"""What edit marks cost an edit call: planning them (the world's detector with OCR, the planner, the
rendering) against the whole call of a model, in one run.

The first N plain edits of the nano test split, no thinking, one prompt per call (as the server runs
edits). Prints the mean planning time with drawn objects as boxes and as silhouettes (``glyph_shapes``),
the mean call time with marks and without, and their ratio.

    python benchmarks/edit_marks_cost.py --model nano -n 32
"""

from __future__ import annotations

import argparse
import time

from thinkgen.eval.nano import load_nano
from thinkgen.glyphs import plan_edit_glyphs
from thinkgen.pipeline import ThinkGenPipeline

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--model", default="nano", help="a model trained with edit marks (or 'nano')")
parser.add_argument("-n", type=int, default=32, help="edits to time")
args = parser.parse_args()

pipe = ThinkGenPipeline.from_pretrained(args.model)
if not (pipe.config.glyph_preset and pipe.config.glyph_edits):
    parser.error(f"{args.model} reads no edit marks (glyph_edits is off)")
items = load_nano(args.n, scenarios=["edit"])
images = [item.input_images[0] for item in items]
plan_edit_glyphs(items[0].prompt, images[0], pipe.config.glyph_preset, 64, 64, 0)  # OCR engine loads once


def planning_time(shapes: bool) -> float:
    start = time.perf_counter()
    for item, image in zip(items, images):
        plan_edit_glyphs(item.prompt, image, pipe.config.glyph_preset, image.width, image.height, 0, shapes)
    return (time.perf_counter() - start) / len(items)


planning_time(True)  # warm-up: the detector's and the OCR engine's first passes are slower
boxes, silhouettes = planning_time(False), planning_time(True)


def call_time(glyphs: bool) -> float:
    start = time.perf_counter()
    for item, image in zip(items, images):
        pipe(item.prompt, images=[image], think=False, seed=0, glyphs=glyphs)
    return (time.perf_counter() - start) / len(items)


call_time(True)  # warm-up
with_marks, without = call_time(True), call_time(False)
print(f"{args.model}: planning {boxes * 1e3:.1f} ms per edit with boxes, {silhouettes * 1e3:.1f} ms with silhouettes; "
      f"call {with_marks * 1e3:.1f} ms with marks (glyph_shapes={pipe.config.glyph_shapes}), "
      f"{without * 1e3:.1f} ms without ({with_marks / without:.2f}x)")
