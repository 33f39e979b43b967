"""Rule rewards over images of the world (or any image a :class:`~thinkgen.world.detect.Detector` reads).

Every reward is a plain callable ``reward(prompts, images, *, specs=..., **columns) -> list[float | None]``
(TRL's convention): ``prompts`` are the user prompts, ``images`` the rendered PIL images (one per prompt),
extra columns arrive as keyword arguments and are ignored where not needed. ``None`` means "does not apply
to this item" (a text reward on a spec without words); the combination skips it.

The scores come from the world's one exact judge, :func:`~thinkgen.world.score.score_spec`:

* ``world`` — the spec's partial credit in [0, 1] (mean clause credit; counts, colours, positions, words);
* ``world_strict`` — 1 if every clause holds, else 0 (GenEval's strict accuracy);
* ``geneval`` / ``geneval_strict`` — the same on the object clauses only (the GenEval rule engine), for
  prompts whose words are judged by a text reward;
* ``ocr`` — Flow-GRPO's OCR reward ``1 − dist / len`` of all target words against all read words;
* ``word_accuracy`` — share of target words read exactly (CVTG's word accuracy);
* ``ned`` — mean 1 − normalised edit distance of each target word to its matched read word.

The ThinkGen paper uses GenEval's detector, HPSv3, a word-accuracy OCR reward, SigLIP2 and NED for stage 4
(Sec. 4.1); here the world's rule detector stands in for the detectors, and any detector plugs in
through the ``detector`` column.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from PIL import Image

from thinkgen.world.detect import Detector
from thinkgen.world.scene import Spec
from thinkgen.world.score import SpecScore, score_spec

SpecLike = Spec | dict[str, Any] | None


def as_spec(spec: SpecLike) -> Spec | None:
    """A spec from a :class:`Spec`, its JSON dict, or ``None``."""
    if spec is None or isinstance(spec, Spec):
        return spec
    if isinstance(spec, dict):
        return Spec.from_dict(spec)
    raise TypeError(f"a spec must be a Spec, a dict or None, got {type(spec).__name__}")


def _check_lengths(images: Sequence[Any], specs: Sequence[SpecLike] | None) -> list[Spec | None]:
    if specs is None:
        raise ValueError("this reward needs a specs column (one spec per image)")
    if len(specs) != len(images):
        raise ValueError(f"got {len(images)} images but {len(specs)} specs; give one spec per image")
    return [as_spec(s) for s in specs]


def _objects_only(spec: Spec) -> Spec:
    return dataclasses.replace(spec, texts=[], exclude_texts=[])


def _score_all(
    images: Sequence[Image.Image], specs: Sequence[Spec | None], detector: Detector | None, objects_only: bool
) -> list[SpecScore | None]:
    out: list[SpecScore | None] = []
    for image, spec in zip(images, specs):
        if spec is not None and objects_only:
            spec = _objects_only(spec)
        if spec is None or (objects_only and not (spec.include or spec.exclude)):
            out.append(None)
        else:
            out.append(score_spec(image, spec, detector))
    return out


def world_reward(
    prompts: Sequence[str],
    images: Sequence[Image.Image],
    *,
    specs: Sequence[SpecLike] | None = None,
    detector: Detector | None = None,
    strict: bool = False,
    **columns: Any,
) -> list[float | None]:
    """The world judge's partial credit of each image against its spec (``strict``: 1 iff all clauses hold).

    Args:
        prompts: The prompts (unused; part of the reward interface).
        images: One image per prompt.
        specs: One :class:`~thinkgen.world.scene.Spec` (or its dict) per image; ``None`` items are skipped.
        detector: Reads images into objects and words (default: the world's rule detector, reading words
            only when a spec has any).
        strict: Score 1/0 by whether every clause holds.

    Returns:
        One score in [0, 1] per image, ``None`` where the spec is ``None``.
    """
    scores = _score_all(images, _check_lengths(images, specs), detector, objects_only=False)
    return [None if s is None else float(s.correct) if strict else s.score for s in scores]


def world_strict_reward(prompts: Sequence[str], images: Sequence[Image.Image], **columns: Any) -> list[float | None]:
    """:func:`world_reward` with ``strict=True``."""
    return world_reward(prompts, images, **{**columns, "strict": True})


def geneval_reward(
    prompts: Sequence[str],
    images: Sequence[Image.Image],
    *,
    specs: Sequence[SpecLike] | None = None,
    detector: Detector | None = None,
    strict: bool = False,
    **columns: Any,
) -> list[float | None]:
    """GenEval's rules on the spec's object clauses only (include / exclude / position); words are ignored.

    Returns ``None`` for a spec without object clauses (a text-only prompt). See :func:`world_reward` for
    the arguments.
    """
    scores = _score_all(images, _check_lengths(images, specs), detector, objects_only=True)
    return [None if s is None else float(s.correct) if strict else s.score for s in scores]


def geneval_strict_reward(
    prompts: Sequence[str], images: Sequence[Image.Image], **columns: Any
) -> list[float | None]:
    """:func:`geneval_reward` with ``strict=True``."""
    return geneval_reward(prompts, images, **{**columns, "strict": True})


def _text_reward(
    images: Sequence[Image.Image], specs: Sequence[SpecLike] | None, detector: Detector | None, metric: str
) -> list[float | None]:
    out: list[float | None] = []
    for image, spec in zip(images, _check_lengths(images, specs)):
        if spec is None or not spec.texts:
            out.append(None)
            continue
        # Scoring the words-only spec reads the words once, with the detector that reads words.
        result = score_spec(image, Spec(tag=spec.tag, texts=list(spec.texts)), detector)
        out.append(float(getattr(result.text, metric)))
    return out


def ocr_reward(
    prompts: Sequence[str],
    images: Sequence[Image.Image],
    *,
    specs: Sequence[SpecLike] | None = None,
    detector: Detector | None = None,
    **columns: Any,
) -> list[float | None]:
    """Flow-GRPO's OCR reward of the spec's words: ``1 − min(dist, len) / len`` over all words joined
    (lowercase, no spaces), 1 when the target occurs in the read text. ``None`` for specs without words."""
    return _text_reward(images, specs, detector, "ocr_reward")


def word_accuracy_reward(
    prompts: Sequence[str],
    images: Sequence[Image.Image],
    *,
    specs: Sequence[SpecLike] | None = None,
    detector: Detector | None = None,
    **columns: Any,
) -> list[float | None]:
    """Share of the spec's words read exactly (the paper's word-accuracy reward). ``None`` without words."""
    return _text_reward(images, specs, detector, "word_accuracy")


def ned_reward(
    prompts: Sequence[str],
    images: Sequence[Image.Image],
    *,
    specs: Sequence[SpecLike] | None = None,
    detector: Detector | None = None,
    **columns: Any,
) -> list[float | None]:
    """Mean ``1 − normalised edit distance`` between each word and its matched read word (the paper's NED
    reward, as a similarity). ``None`` for specs without words."""
    return _text_reward(images, specs, detector, "ned")
