"""Accuracy and speed of the nano world's judge (detector + OCR) on random scenes.

Reports, for one world preset:
  * exact recovery on clean renders: detected multiset of (shape, colour) equals the scene's, and the
    words read equal the scene's words (target >= 99.5 %);
  * the same on degraded renders (thinkgen.world.degrade, seed = scene index; target >= 95 %);
  * OCR word accuracy on the clean renders' words (target >= 98 %);
  * throughput in images/s, objects only and with OCR.

Scene words come from the world's vocabulary (thinkgen.world.vocab), or with --random-words from random
letter strings of the world's lengths, a stress test (no familiar spelling, confusable runs like "ll").
Runs on CPU:

    python benchmarks/judge_accuracy.py -n 2000 --preset nano --seed 0
    python benchmarks/judge_accuracy.py -n 2000 --preset full --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
import string
import time
from collections import Counter

from thinkgen.world.degrade import degrade
from thinkgen.world.detect import Detection, DetectorConfig, WorldDetector
from thinkgen.world.layout import random_scene
from thinkgen.world.render import render
from thinkgen.world.scene import Scene, get_preset
from thinkgen.world.vocab import words_for

# -----------------------------------------------------------------------------
# args

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("-n", type=int, default=2000, help="scenes per measurement")
parser.add_argument("--preset", default="nano", help="world preset: nano, medium or full")
parser.add_argument("--seed", type=int, default=0, help="seeds scenes, words and degradations")
parser.add_argument("--random-words", action="store_true", help="random letter strings instead of the vocabulary")
args = parser.parse_args()

world = get_preset(args.preset)
rng = random.Random(args.seed)
vocabulary = list(words_for(world))
if args.random_words:
    vocabulary = [
        "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(*world.word_length)))
        for _ in range(len(vocabulary))
    ]

# -----------------------------------------------------------------------------
# scenes and images

scenes = [random_scene(world, rng, vocabulary=vocabulary) for _ in range(args.n)]
clean = [render(scene, world.canvas_px) for scene in scenes]
degraded = [degrade(image, seed=args.seed * 1_000_003 + i) for i, image in enumerate(clean)]

with_ocr = WorldDetector(DetectorConfig.for_world(world))
objects_only = WorldDetector(DetectorConfig.for_world(world, read_words=False))
with_ocr.detect(clean[0])  # load the OCR model outside the timed loops


def recovered(scene: Scene, detection: Detection, check_words: bool = True) -> bool:
    same_objects = Counter((o.shape, o.colour) for o in scene.objects) == Counter(
        (o.shape, o.colour) for o in detection.objects
    )
    return same_objects and (not check_words or Counter(w.text for w in scene.words) == Counter(
        w.text for w in detection.words
    ))


def run(detector: WorldDetector, images: list) -> tuple[list[Detection], float]:
    start = time.perf_counter()
    detections = [detector.detect(image) for image in images]
    return detections, len(images) / (time.perf_counter() - start)


# -----------------------------------------------------------------------------
# measure

clean_objects, objects_per_s = run(objects_only, clean)
clean_full, full_per_s = run(with_ocr, clean)
degraded_full, _ = run(with_ocr, degraded)

words_total = sum(len(s.words) for s in scenes)
words_read = sum(
    sum((Counter(w.text for w in s.words) & Counter(w.text for w in d.words)).values())
    for s, d in zip(scenes, clean_full)
)
failures = [
    {"index": i, "scene": [(o.shape, o.colour) for o in s.objects] + [w.text for w in s.words],
     "read": [(o.shape, o.colour) for o in d.objects] + [w.text for w in d.words]}
    for i, (s, d) in enumerate(zip(scenes, degraded_full)) if not recovered(s, d)
]

report = {
    "preset": args.preset,
    "n": args.n,
    "seed": args.seed,
    "words_from": "random letters" if args.random_words else "vocabulary",
    "clean_exact_recovery": sum(map(recovered, scenes, clean_full)) / args.n,
    "clean_object_recovery": sum(recovered(s, d, check_words=False) for s, d in zip(scenes, clean_objects)) / args.n,
    "degraded_exact_recovery": sum(map(recovered, scenes, degraded_full)) / args.n,
    "degraded_object_recovery": sum(recovered(s, d, False) for s, d in zip(scenes, degraded_full)) / args.n,
    "ocr_word_accuracy": words_read / words_total if words_total else None,
    "words": words_total,
    "images_per_s_objects_only": round(objects_per_s, 1),
    "images_per_s_with_ocr": round(full_per_s, 1),
}
print(json.dumps(report, indent=2))
print(f"first degraded failures ({len(failures)}):")
for failure in failures[:10]:
    print(" ", failure)
