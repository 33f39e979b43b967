"""DPG-Bench (Hu et al., 2024, ELLA): dense prompts, scored by yes/no questions with dependencies.

Loader: ``prompts.jsonl``, one ``{"item_id", "prompt"}`` per line. The questions come from DPG's
``dpg_bench.csv`` (columns ``item_id``, ``proposition_id``, ``dependency`` — parent proposition ids
separated by commas, 0 for none —, ``category_broad``, ``question_natural_language``); without that file
the run generates but does not score.

Layout (DPG's): ``<root>/<item_id>.png``, the prompt's N images tiled in one grid (2×2 for DPG's 4),
row-major, ``ceil(sqrt(N))`` columns.

Scorer: for every image, the judge answers every question of the prompt yes (1) or no (0); DPG uses a VQA
model one question at a time, here one request answers the numbered list. Dependency masking: a question
any of whose parents scored 0 scores 0 (parents are resolved in proposition order, so masking carries down
a chain). An image's score is the mean over its questions; a prompt's, the mean over its images; overall =
mean over prompts, in percent. A category's score is the mean over all its (image, question) pairs.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..imageio import atomic_write_bytes, load_image
from .judge import JudgeClient, parse_numbered_yes_no
from .runner import EvalItem, category_means, iter_jsonl_file, mean, png_bytes, require_field

QUESTION_COLUMNS = ("item_id", "proposition_id", "dependency", "category_broad", "question_natural_language")
CATEGORY_ORDER = ("entity", "attribute", "relation", "global", "other")

JUDGE_PROMPT = """Look at the image and answer each question about it with yes or no only.

{questions}

Answer with one line per question, in the form "<number>: yes" or "<number>: no"."""


@dataclass(frozen=True)
class Question:
    """One DPG question: its proposition id, parent ids (0 = none), broad category and text."""

    proposition_id: int
    parents: tuple[int, ...]
    category: str
    text: str


def load_dpg(path: str | Path) -> list[EvalItem]:
    """Read DPG's ``prompts.jsonl`` (``item_id``, ``prompt`` per line).

    Raises:
        ValueError: a line that is not JSON or misses a field (naming the line), or a repeated ``item_id``.
    """
    items: list[EvalItem] = []
    seen: set[str] = set()
    for where, raw in iter_jsonl_file(path, "DPG prompt file"):
        item_id = str(require_field(raw, "item_id", (str, int), where))
        prompt = require_field(raw, "prompt", str, where)
        if item_id in seen:
            raise ValueError(f"{where}: item_id {item_id!r} appears twice")
        seen.add(item_id)
        items.append(EvalItem(item_id, "dpg", prompt))
    if not items:
        raise ValueError(f"{path} holds no prompts")
    return items


def load_questions(path: str | Path) -> dict[str, list[Question]]:
    """Read DPG's question file (``dpg_bench.csv``): questions per ``item_id``, in proposition order.

    Raises:
        ValueError: a missing column, or a row whose ids are not integers (naming the row).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DPG question file not found: {path}")
    questions: dict[str, list[Question]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in QUESTION_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; expected {list(QUESTION_COLUMNS)}")
        for n, row in enumerate(reader, start=2):
            try:
                pid = int(row["proposition_id"])
                parents = tuple(int(p) for p in str(row["dependency"]).replace(" ", "").split(",") if p)
            except ValueError as err:
                raise ValueError(f"{path} row {n}: proposition_id and dependency must be integers ({err})") from err
            text = (row["question_natural_language"] or "").strip()
            if not text:
                raise ValueError(f"{path} row {n}: empty question_natural_language")
            category = (row["category_broad"] or "other").strip()
            questions.setdefault(str(row["item_id"]), []).append(Question(pid, parents, category, text))
    for qs in questions.values():
        qs.sort(key=lambda q: q.proposition_id)
    return questions


def mask_by_dependency(questions: Sequence[Question], answers: Sequence[bool]) -> list[float]:
    """DPG's scores: 1 for yes, 0 for no, and 0 for any question whose parent scored 0."""
    score = {q.proposition_id: float(a) for q, a in zip(questions, answers)}
    for q in questions:  # proposition order: a parent's masking is settled before its children look
        if any(score.get(p, 1.0) == 0.0 for p in q.parents if p != 0):
            score[q.proposition_id] = 0.0
    return [score[q.proposition_id] for q in questions]


def grid_shape(num_images: int) -> tuple[int, int]:
    """(rows, columns) of the grid that tiles ``num_images`` images."""
    cols = math.ceil(math.sqrt(num_images))
    return math.ceil(num_images / cols), cols


@dataclass(frozen=True)
class GridLayout:
    """``<item_id>.png``: the prompt's images tiled row-major in one grid (DPG's 2×2 for 4 images)."""

    def write(self, root: Path, item: EvalItem, images: Sequence[Image.Image]) -> list[str]:
        rows, cols = grid_shape(len(images))
        w, h = images[0].size
        grid = Image.new("RGB", (cols * w, rows * h), "white")
        for k, image in enumerate(images):
            grid.paste(image, ((k % cols) * w, (k // cols) * h))
        rel = f"{item.key}.png"
        atomic_write_bytes(root / rel, png_bytes(grid))
        return [rel]

    def read(self, root: Path, item: EvalItem, paths: Sequence[str], num_images: int) -> list[Image.Image]:
        grid = load_image(root / paths[0])
        rows, cols = grid_shape(num_images)
        w, h = grid.width // cols, grid.height // rows
        return [grid.crop(((k % cols) * w, (k // cols) * h, (k % cols + 1) * w, (k // cols + 1) * h))
                for k in range(num_images)]


class DPGScorer:
    """DPG's question protocol with dependency masking (see the module docstring)."""

    def __init__(self, judge: JudgeClient, questions: dict[str, list[Question]]) -> None:
        self.judge = judge
        self.questions = questions
        self.scorer_id = f"dpg/{judge.judge_id}"

    def score(self, item: EvalItem, images: list[Image.Image], record: dict[str, Any]) -> dict[str, Any]:
        questions = self.questions.get(item.key)
        if not questions:
            raise ValueError(f"the question file has no questions for item_id {item.key!r}")
        text = JUDGE_PROMPT.format(questions="\n".join(f"{i}: {q.text}" for i, q in enumerate(questions, 1)))
        per_image = []
        for image in images:
            answers = self.judge.ask(text, [image], lambda a: parse_numbered_yes_no(a, len(questions)))
            scores = mask_by_dependency(questions, answers)
            per_image.append({"answers": answers, "scores": scores, "mean": sum(scores) / len(scores)})
        return {
            "score": 100.0 * mean(p["mean"] for p in per_image),
            "passed": all(s == 1.0 for p in per_image for s in p["scores"]),
            "question_categories": [q.category for q in questions],
            "per_image": per_image,
        }

    def aggregate(self, samples: list[dict[str, Any]], items: Sequence[EvalItem]) -> dict[str, Any]:
        scored = [s for s in samples if s.get("error") is None]
        pairs = [{"category": c, "score": 100.0 * v}
                 for s in scored for p in s["per_image"] for c, v in zip(s["question_categories"], p["scores"])]
        found = category_means(pairs)
        order = [c for c in CATEGORY_ORDER if c in found] + [c for c in found if c not in CATEGORY_ORDER]
        return {
            "overall": mean(s["score"] for s in scored),
            "categories": {c: found[c] for c in order},
            "metrics": {"num_questions": len(pairs)},
            "scale": "percent of questions answered yes after dependency masking",
        }
