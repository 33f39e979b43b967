"""RISEBench (Zhao et al., 2025): reasoning-informed visual editing, scored by a judge.

Loader: ``data_total.json``, a list of ``{"index", "category", "instruction", "image"}`` with an optional
reference answer (``reference`` or ``reference_txt`` text, ``reference_img`` image path). Its input images
are not part of the file: ``images_dir`` is the folder the ``image`` paths are relative to
(``temporal_reasoning_images/1.png`` …); every one must exist.

Layout (RISEBench's output folders): ``<root>/images/<category>/<index>.png``; further images of a sample
``<index>_<k>.png``.

Scorer: the judge sees the input image, the output image (and the reference image, if any) with the
instruction and the reference answer, and scores 1–5 on instruction reasoning, appearance consistency and
visual plausibility (plausibility does not apply to logical puzzles, which are diagrams). An image is
solved when every applicable dimension scores 5; accuracy (the headline, in percent) is the share of solved
images, overall and per category. Mean dimension scores are reported too. RISEBench asks the judge one
dimension at a time; here one request asks for all of them (fewer calls; the rubric is the same).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ..imageio import load_image
from .judge import JudgeClient, parse_labelled_scores
from .runner import (
    EvalItem,
    FileLayout,
    category_means,
    check_images_dir,
    mean,
    read_json_file,
    require_field,
    suffixed,
)

RISE_CATEGORIES: tuple[str, ...] = ("temporal_reasoning", "causal_reasoning", "spatial_reasoning", "logical_reasoning")
DIMENSIONS: dict[str, str] = {
    "Reasoning": "does the output show the correct result of reasoning through the instruction, as the reference "
                 "answer describes?",
    "Consistency": "apart from what the instruction changes, does the output keep the input's content, identity "
                   "and layout?",
    "Plausibility": "does the output look physically and visually plausible, free of artefacts and distortions?",
}
FULL_MARK = 5
NO_PLAUSIBILITY = ("logical_reasoning",)  # puzzles and diagrams: realism does not apply

JUDGE_PROMPT = """You are grading an image edit that needs reasoning. The first image is the input{reference_note}; the last image is the model's output.

Instruction: {instruction}
Reference answer: {reference}

Score the output from 1 (completely wrong) to 5 (perfect) on each aspect:
{aspects}

Give one short sentence of justification, then exactly these lines:
{lines}"""


def load_risebench(path: str | Path, images_dir: str | Path | None) -> list[EvalItem]:
    """Read RISEBench's ``data_total.json`` and check its input images under ``images_dir``.

    Raises:
        ValueError: malformed entries (naming the entry and field), or no ``images_dir``.
        FileNotFoundError: the file, the folder or an input image is missing.
    """
    data = read_json_file(path, "RISEBench data file")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of samples, got {type(data).__name__}")
    entries = []
    for i, raw in enumerate(data):
        where = f"{path} entry {i}"
        index = str(require_field(raw, "index", (str, int), where))
        category = require_field(raw, "category", str, where)
        if category not in RISE_CATEGORIES:
            raise ValueError(f"{where}: field 'category' is {category!r}; allowed: {', '.join(RISE_CATEGORIES)}")
        instruction = require_field(raw, "instruction", str, where)
        image = require_field(raw, "image", str, where)
        reference = raw.get("reference") or raw.get("reference_txt") or ""
        entries.append((index, category, instruction, image, reference, raw.get("reference_img")))
    if not entries:
        raise ValueError(f"{path} holds no samples")
    if len({e[0] for e in entries}) != len(entries):
        raise ValueError(f"{path}: sample indices are not unique")
    folder = check_images_dir(images_dir, [e[3] for e in entries] + [e[5] for e in entries if e[5]],
                              "RISEBench")
    return [
        EvalItem(index, category, instruction, (folder / image,),
                 meta={"reference": reference, "reference_img": str(folder / ref_img) if ref_img else None})
        for index, category, instruction, image, reference, ref_img in entries
    ]


RISE_LAYOUT = FileLayout(lambda item, k: f"images/{item.category}/{suffixed(item.key, k)}")


def applicable_dimensions(category: str) -> list[str]:
    """The judged dimensions of a category."""
    return [d for d in DIMENSIONS if not (d == "Plausibility" and category in NO_PLAUSIBILITY)]


def is_solved(scores: dict[str, float]) -> bool:
    """RISEBench's success criterion: full marks on every applicable dimension."""
    return all(v == FULL_MARK for v in scores.values())


class RiseBenchScorer:
    """RISEBench's judge protocol and accuracy (see the module docstring)."""

    def __init__(self, judge: JudgeClient) -> None:
        self.judge = judge
        self.scorer_id = f"risebench/{judge.judge_id}"

    def score(self, item: EvalItem, images: list[Image.Image], record: dict[str, Any]) -> dict[str, Any]:
        dims = applicable_dimensions(item.category)
        reference_image = item.meta.get("reference_img")
        missing = "(see the reference image)" if reference_image else "(none given; judge by the instruction)"
        text = JUDGE_PROMPT.format(
            reference_note="; the second image is the reference answer" if reference_image else "",
            instruction=item.prompt,
            reference=item.meta.get("reference") or missing,
            aspects="\n".join(f"- {d}: {DIMENSIONS[d]}" for d in dims),
            lines="\n".join(f"{d}: <1-5>" for d in dims),
        )
        shown = [load_image(p) for p in item.input_images]
        if reference_image:
            shown.append(load_image(reference_image))
        per_image = []
        for image in images:
            scores = self.judge.ask(text, [*shown, image], lambda a: parse_labelled_scores(a, dims, 1, FULL_MARK))
            per_image.append({"scores": scores, "solved": is_solved(scores)})
        solved = [p["solved"] for p in per_image]
        return {"score": 100.0 * sum(solved) / len(solved), "passed": all(solved), "per_image": per_image}

    def aggregate(self, samples: list[dict[str, Any]], items: Sequence[EvalItem]) -> dict[str, Any]:
        scored = [s for s in samples if s.get("error") is None]
        images = [(s["category"], p) for s in scored for p in s["per_image"]]
        metrics: dict[str, Any] = {}
        for dim in DIMENSIONS:
            metrics[f"mean_{dim.lower()}"] = mean(p["scores"][dim] for _, p in images if dim in p["scores"])
        categories = category_means(scored)
        return {
            "overall": mean(100.0 * p["solved"] for _, p in images),
            "categories": {c: categories[c] for c in RISE_CATEGORIES if c in categories},
            "metrics": metrics,
            "scale": "accuracy in percent: images with full marks (5) on every applicable dimension",
        }
