"""CVTG-2K (TextCrafter, Du et al., 2025): complex visual text generation, scored by OCR.

Loader: CVTG's prompt files ``CVTG/{2,3,4,5}.json`` (the number of text regions), each
``{"data_list": [{"index", "prompt", "carrier_list", "sentence_list"}]}``; several files are one run and
each file is a category (its stem).

Layout (CVTG's): ``<root>/<file stem>/<index>.png``; further images of a prompt ``<index>_<k>.png``.

Scorer: the whole image is read by RapidOCR (text detection + recognition, ``thinkgen[ocr]``). Targets are
the words of ``sentence_list``; targets and read words are compared lowercase with punctuation removed.
Per image (:func:`thinkgen.world.score.text_metrics`): word accuracy = share of target words read
exactly; NED = mean over target words of 1 − Levenshtein / max(len) against the most similar unused read
word. Both are averaged over images (overall and per file). CLIPScore — max(cos(image, prompt), 0) of a
CLIP model — is added only when a local CLIP folder is given.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from ..world.ocr import new_rapidocr
from ..world.score import text_metrics
from .clip import load_clip
from .runner import EvalItem, FileLayout, category_means, mean, read_json_file, require_field, suffixed


def load_cvtg(paths: Sequence[str | Path]) -> list[EvalItem]:
    """Read CVTG prompt files; keys are ``<file stem>/<index>``.

    Raises:
        ValueError: a file without ``data_list``, or an entry missing a field (naming file, entry, field).
    """
    items: list[EvalItem] = []
    for path in paths:
        path = Path(path)
        data = read_json_file(path, "CVTG prompt file")
        entries = data.get("data_list") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected an object with a 'data_list' list")
        for i, raw in enumerate(entries):
            where = f"{path} data_list[{i}]"
            index = require_field(raw, "index", (int, str), where)
            prompt = require_field(raw, "prompt", str, where)
            sentences = require_field(raw, "sentence_list", list, where)
            if not sentences or not all(isinstance(s, str) and s.strip() for s in sentences):
                raise ValueError(f"{where}: field 'sentence_list' must be a non-empty list of non-empty strings")
            carriers = raw.get("carrier_list", [])
            items.append(EvalItem(f"{path.stem}/{index}", path.stem, prompt,
                                  meta={"sentences": sentences, "carriers": carriers}))
    if not items:
        raise ValueError("the CVTG files hold no prompts")
    if len({it.key for it in items}) != len(items):
        raise ValueError("CVTG prompts repeat a (file, index) pair; give each file once")
    return items


CVTG_LAYOUT = FileLayout(lambda item, k: suffixed(item.key, k))


def normalise_words(texts: Sequence[str]) -> list[str]:
    """Lowercase words without punctuation, from phrases (empty pieces dropped)."""
    return [w for text in texts for w in (re.sub(r"[^0-9a-z]", "", t) for t in text.lower().split()) if w]


class TextReader(Protocol):
    """Reads all text in an image as a list of words, in reading order."""

    def read(self, image: Image.Image) -> list[str]:
        ...


class FullImageOCR:
    """RapidOCR's detection + recognition over a whole image (loaded on first use)."""

    def __init__(self) -> None:
        self._engine: Any = None
        self._lock = threading.Lock()

    def read(self, image: Image.Image) -> list[str]:
        with self._lock:
            if self._engine is None:
                self._engine = new_rapidocr("CVTG scoring")
        result, _ = self._engine(np.asarray(image.convert("RGB")))
        # Lines come back as [box, text, score]; sort top-to-bottom, then left-to-right by their first corner.
        lines = sorted(result or [], key=lambda r: (round(r[0][0][1]), r[0][0][0]))
        return [w for r in lines for w in str(r[1]).split()]


class ImageTextSimilarity(Protocol):
    """Cosine similarity between an image and a text."""

    def similarity(self, image: Image.Image, text: str) -> float:
        ...


class ClipSimilarity:
    """A CLIP model from a local folder (transformers ``CLIPModel`` + ``CLIPProcessor``)."""

    def __init__(self, model_path: str | Path, device: str | None = None) -> None:
        self.model, self.processor = load_clip(model_path, device)

    def similarity(self, image: Image.Image, text: str) -> float:
        import torch

        inputs = self.processor(text=[text], images=[image], return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            out = self.model(**{k: v.to(self.model.device) for k, v in inputs.items()})
        a = torch.nn.functional.normalize(out.image_embeds, dim=-1)
        b = torch.nn.functional.normalize(out.text_embeds, dim=-1)
        return float((a * b).sum())


class CVTGScorer:
    """CVTG's OCR metrics (see the module docstring).

    Args:
        reader: the OCR (default :class:`FullImageOCR`).
        clip: image–text similarity for CLIPScore; ``None`` leaves it out.
    """

    def __init__(self, reader: TextReader | None = None, clip: ImageTextSimilarity | None = None) -> None:
        self.reader = reader or FullImageOCR()
        self.clip = clip
        self.scorer_id = f"cvtg/{type(self.reader).__name__}/{type(clip).__name__ if clip else 'no-clip'}"

    def score(self, item: EvalItem, images: list[Image.Image], record: dict[str, Any]) -> dict[str, Any]:
        targets = normalise_words(item.meta["sentences"])
        if not targets:
            raise ValueError(f"prompt {item.key} has no target words after normalisation")
        per_image = []
        for image in images:
            read = normalise_words(self.reader.read(image))
            m = text_metrics(targets, read)
            entry = {"read": read, "word_accuracy": m.word_accuracy, "ned": m.ned}
            if self.clip is not None:
                entry["clip_score"] = max(self.clip.similarity(image, item.prompt), 0.0)
            per_image.append(entry)
        result = {
            "score": mean(p["word_accuracy"] for p in per_image),
            "passed": all(p["word_accuracy"] == 1.0 for p in per_image),
            "ned": mean(p["ned"] for p in per_image),
            "targets": targets,
            "per_image": per_image,
        }
        if self.clip is not None:
            result["clip_score"] = mean(p["clip_score"] for p in per_image)
        return result

    def aggregate(self, samples: list[dict[str, Any]], items: Sequence[EvalItem]) -> dict[str, Any]:
        scored = [s for s in samples if s.get("error") is None]
        metrics: dict[str, Any] = {"ned": mean(s["ned"] for s in scored)}
        if self.clip is not None:
            metrics["clip_score"] = mean(s["clip_score"] for s in scored)
        return {
            "overall": mean(s["score"] for s in scored),
            "categories": dict(sorted(category_means(scored).items())),
            "metrics": metrics,
            "scale": "word accuracy in [0, 1] (categories: number of text regions); NED in [0, 1]",
        }
