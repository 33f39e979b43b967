"""WISE (Niu et al., 2025): world-knowledge-informed text-to-image generation, scored by a judge.

Loader: WISE's JSON files (``cultural_common_sense.json``, ``natural_science.json``,
``spatio-temporal_reasoning.json``, or WISE-Verified's ``verified_merge.json``): lists of ``{"prompt_id",
"Prompt", "Explanation", "Category", "Subcategory"}``. Several files are read as one benchmark.

Layout (WISE's): ``<root>/<prompt_id>.png``; further images of a prompt ``<prompt_id>_<k>.png``.

Scorer: the judge sees the image, the prompt and the explanation of what a correct image shows, and rates
consistency, realism and aesthetic quality, each 0–2. Per image

    WiScore = (0.7·consistency + 0.2·realism + 0.1·aesthetic) / 2        (in [0, 1])

a category's score is the mean over its images, and

    overall = 0.4·culture + 0.167·time + 0.133·space + 0.1·(biology + physics + chemistry).

When a run covers only some categories (``--limit``) the overall is the same weighted mean over those
present (weights renormalised) and ``metrics.complete`` is false.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from .judge import JudgeClient, parse_labelled_scores
from .runner import EvalItem, FileLayout, category_means, mean, read_json_file, require_field, suffixed

# WISE's category names (as its files spell them, compared case-insensitively) → ours.
CATEGORY_NAMES: dict[str, str] = {
    "cultural knowledge": "culture",
    "time": "time",
    "space": "space",
    "biology": "biology",
    "physical knowledge": "physics",
    "chemistry": "chemistry",
}
OVERALL_WEIGHTS: dict[str, float] = {
    "culture": 0.4, "time": 0.167, "space": 0.133, "biology": 0.1, "physics": 0.1, "chemistry": 0.1,
}
WISCORE_WEIGHTS: dict[str, float] = {"Consistency": 0.7, "Realism": 0.2, "Aesthetic Quality": 0.1}
MAX_ASPECT_SCORE = 2  # each aspect is judged 0, 1 or 2

JUDGE_PROMPT = """You are grading an image that a model generated from a prompt which needs world knowledge to draw correctly.

Prompt: {prompt}
What a correct image shows: {explanation}

Rate the image on three aspects, each with 0, 1 or 2:
- Consistency: does the image show what the prompt means, as the explanation describes? 2 = fully, 1 = partly or with mistakes, 0 = not at all.
- Realism: is the image physically and visually plausible (shapes, lighting, materials, proportions)? 2 = realistic, 1 = noticeable flaws, 0 = clearly broken.
- Aesthetic Quality: composition, colour and detail. 2 = good, 1 = ordinary, 0 = poor.

Give one short sentence of justification, then exactly these three lines:
Consistency: <0, 1 or 2>
Realism: <0, 1 or 2>
Aesthetic Quality: <0, 1 or 2>"""


def load_wise(paths: Sequence[str | Path]) -> list[EvalItem]:
    """Read WISE prompt files; keys are the ``prompt_id`` s, which must be unique across the files.

    Raises:
        ValueError: a file that is not a JSON list, or an entry missing a field or of an unknown category,
            naming the file, the entry and the field.
    """
    items: list[EvalItem] = []
    seen: dict[str, str] = {}
    for path in paths:
        data = read_json_file(path, "WISE prompt file")
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of prompts, got {type(data).__name__}")
        for i, raw in enumerate(data):
            where = f"{path} entry {i}"
            prompt_id = require_field(raw, "prompt_id", (int, str), where)
            prompt = require_field(raw, "Prompt", str, where)
            explanation = require_field(raw, "Explanation", str, where)
            category = require_field(raw, "Category", str, where)
            ours = CATEGORY_NAMES.get(category.strip().lower())
            if ours is None:
                raise ValueError(f"{where}: field 'Category' is {category!r}; allowed: "
                                 f"{', '.join(sorted(CATEGORY_NAMES))} (any case)")
            key = str(prompt_id)
            if key in seen:
                raise ValueError(f"{where}: prompt_id {key} appears twice (also in {seen[key]})")
            seen[key] = where
            meta = {"explanation": explanation, "subcategory": raw.get("Subcategory"), "category_name": category}
            items.append(EvalItem(key, ours, prompt, meta=meta))
    if not items:
        raise ValueError("the WISE files hold no prompts")
    return items


WISE_LAYOUT = FileLayout(lambda item, k: suffixed(item.key, k))


def wiscore(consistency: float, realism: float, aesthetic: float) -> float:
    """WISE's per-image score in [0, 1] from the three 0–2 judge scores."""
    return (WISCORE_WEIGHTS["Consistency"] * consistency + WISCORE_WEIGHTS["Realism"] * realism
            + WISCORE_WEIGHTS["Aesthetic Quality"] * aesthetic) / MAX_ASPECT_SCORE


def weighted_overall(categories: dict[str, float]) -> float | None:
    """WISE's overall score from category scores (renormalised over the categories present)."""
    present = {c: w for c, w in OVERALL_WEIGHTS.items() if c in categories}
    if not present:
        return None
    return sum(w * categories[c] for c, w in present.items()) / sum(present.values())


class WiseScorer:
    """WISE's judge protocol and formulas (see the module docstring)."""

    def __init__(self, judge: JudgeClient) -> None:
        self.judge = judge
        self.scorer_id = f"wise/{judge.judge_id}"

    def score(self, item: EvalItem, images: list[Image.Image], record: dict[str, Any]) -> dict[str, Any]:
        text = JUDGE_PROMPT.format(prompt=item.prompt, explanation=item.meta["explanation"])
        labels = list(WISCORE_WEIGHTS)
        per_image = []
        for image in images:
            s = self.judge.ask(text, [image], lambda answer: parse_labelled_scores(answer, labels, 0, MAX_ASPECT_SCORE))
            per_image.append({"consistency": s["Consistency"], "realism": s["Realism"],
                              "aesthetic": s["Aesthetic Quality"],
                              "wiscore": wiscore(s["Consistency"], s["Realism"], s["Aesthetic Quality"])})
        return {"score": mean(p["wiscore"] for p in per_image), "passed": None, "per_image": per_image}

    def aggregate(self, samples: list[dict[str, Any]], items: Sequence[EvalItem]) -> dict[str, Any]:
        scored = [s for s in samples if s.get("error") is None]
        categories = category_means(scored)
        categories = {c: categories[c] for c in OVERALL_WEIGHTS if c in categories}
        return {
            "overall": weighted_overall(categories),
            "categories": categories,
            "metrics": {"complete": len(categories) == len(OVERALL_WEIGHTS)},
            "scale": "WiScore in [0, 1]; overall = 0.4 culture + 0.167 time + 0.133 space + 0.1 (bio + phys + chem)",
        }
