"""ImgEdit (Ye et al., 2025) basic editing benchmark, scored by a judge.

Loader: ``basic_edit.json``, an object ``{key: {"id", "prompt", "edit_type"}}``; ``id`` is the input
image's path relative to ``images_dir`` (``animal/000342021.jpg``), and every one must exist.

Layout (ImgEdit's): ``<root>/<key>.png``; further images of an edit ``<key>_<k>.png``.

Scorer: per edit type a rubric asks the judge for three 1–5 scores (compliance with the instruction,
visual quality, detail preservation; the names differ per type). The rubric text comes from a file the user
gives (ImgEdit's ``judge_rubrics.json``: ``{edit_type: text}``, with ``<edit_prompt>`` where the instruction
goes; the score names are read from its ``Name: A number from 1 to 5`` lines). Without one, a generic
rubric of ours is used for every type. Per image the score is the mean of the three; a type's score is the
mean over its images; overall = the mean over types.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
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

EDIT_TYPES: tuple[str, ...] = ("add", "remove", "replace", "adjust", "style", "action", "extract", "background",
                               "compose")
PROMPT_SLOT = "<edit_prompt>"
NUM_SCORES = 3

DEFAULT_RUBRIC = """You are rating an image edit. You get the image before and after the edit, and the instruction.

Score the edit from 1 (failed) to 5 (flawless) on three aspects:
- Instruction Compliance: the requested change is made, completely and only where asked.
- Visual Quality: the edited image looks natural, without seams, blur or distortions.
- Detail Preservation: everything the instruction does not touch stays as it was.
The second and third scores should not be higher than the first.

Reply with a justification of at most 20 words, then:
Instruction Compliance: <1-5>
Visual Quality: <1-5>
Detail Preservation: <1-5>
The instruction is: <edit_prompt>.

The images before and after the edit follow."""


@dataclass(frozen=True)
class Rubric:
    """A judge prompt with ``<edit_prompt>`` for the instruction, and the three score names it asks for."""

    text: str
    labels: tuple[str, ...]

    @classmethod
    def from_text(cls, text: str, where: str) -> Rubric:
        if PROMPT_SLOT not in text:
            raise ValueError(f"{where}: the rubric has no {PROMPT_SLOT} slot for the instruction")
        labels = tuple(dict.fromkeys(m.strip() for m in re.findall(r"(?m)^\s*([^\n:]+?):\s*(?:A number|<1-5>)", text)))
        if len(labels) != NUM_SCORES:
            raise ValueError(f"{where}: expected {NUM_SCORES} score lines ('Name: A number from 1 to 5'), "
                             f"found {list(labels)}")
        return cls(text, labels)

    def prompt(self, instruction: str) -> str:
        return self.text.replace(PROMPT_SLOT, instruction)


def load_rubrics(path: str | Path | None) -> dict[str, Rubric]:
    """Rubrics by edit type from a ``judge_rubrics.json``-style file; without a file, the default rubric
    for every type."""
    if path is None:
        default = Rubric.from_text(DEFAULT_RUBRIC, "default rubric")
        return {t: default for t in EDIT_TYPES}
    data = read_json_file(path, "ImgEdit rubric file")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object {{edit_type: rubric text}}")
    return {t: Rubric.from_text(require_field(data, t, str, f"{path}"), f"{path} [{t!r}]") for t in data}


def load_imgedit(path: str | Path, images_dir: str | Path | None) -> list[EvalItem]:
    """Read ImgEdit's ``basic_edit.json`` and check its input images under ``images_dir``.

    Raises:
        ValueError: malformed entries (naming the key and field), or no ``images_dir``.
        FileNotFoundError: the file, the folder or an input image is missing.
    """
    data = read_json_file(path, "ImgEdit edit file")
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a non-empty object {{key: {{id, prompt, edit_type}}}}")
    entries = []
    for key, raw in data.items():
        where = f"{path} key {key!r}"
        image = require_field(raw, "id", str, where)
        prompt = require_field(raw, "prompt", str, where)
        edit_type = require_field(raw, "edit_type", str, where)
        if edit_type not in EDIT_TYPES:
            raise ValueError(f"{where}: field 'edit_type' is {edit_type!r}; allowed: {', '.join(EDIT_TYPES)}")
        entries.append((str(key), edit_type, prompt, image))
    folder = check_images_dir(images_dir, [e[3] for e in entries], "ImgEdit")
    return [EvalItem(key, t, prompt, (folder / image,), meta={"id": image}) for key, t, prompt, image in entries]


IMGEDIT_LAYOUT = FileLayout(lambda item, k: suffixed(item.key, k))


class ImgEditScorer:
    """ImgEdit's judge protocol (see the module docstring).

    Args:
        judge: the judge client.
        rubrics: by edit type (:func:`load_rubrics`); a type without one is an error when it is scored.
    """

    def __init__(self, judge: JudgeClient, rubrics: dict[str, Rubric]) -> None:
        self.judge = judge
        self.rubrics = rubrics
        custom = "default" if all(r.text == DEFAULT_RUBRIC for r in rubrics.values()) else "custom"
        self.scorer_id = f"imgedit/{judge.judge_id}/{custom}"

    def score(self, item: EvalItem, images: list[Image.Image], record: dict[str, Any]) -> dict[str, Any]:
        rubric = self.rubrics.get(item.category)
        if rubric is None:
            raise ValueError(f"no rubric for edit type {item.category!r}; the rubric file has {sorted(self.rubrics)}")
        source = load_image(item.input_images[0])
        per_image = []
        for image in images:
            scores = self.judge.ask(rubric.prompt(item.prompt), [source, image],
                                    lambda a: parse_labelled_scores(a, rubric.labels, 1, 5))
            per_image.append({"scores": scores, "mean": sum(scores.values()) / len(scores)})
        return {"score": mean(p["mean"] for p in per_image), "passed": None, "per_image": per_image}

    def aggregate(self, samples: list[dict[str, Any]], items: Sequence[EvalItem]) -> dict[str, Any]:
        categories = category_means(s for s in samples if s.get("error") is None)
        categories = {t: categories[t] for t in EDIT_TYPES if t in categories}
        return {
            "overall": mean(categories.values()),
            "categories": categories,
            "metrics": {},
            "scale": "judge score 1-5 (mean of three); overall = mean over edit types",
        }
