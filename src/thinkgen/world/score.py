"""Scoring an image against a :class:`~thinkgen.world.scene.Spec`: the nano world's one exact judge.

Objects follow GenEval's rules (``benchmarks/README.md``), with the world's exact colours:

* an ``include`` clause needs at least ``count`` detected objects of its shape (and colour, if given);
* an ``exclude`` clause needs fewer than ``count`` of them ("exactly n" is include n + exclude n+1);
* a ``position`` clause ``(relation, j)`` counts only the matching objects that stand in ``relation`` to
  an object matching include clause ``j``, and fails when clause ``j`` itself failed. Any such pair
  counts. (GenEval instead takes its top-``count`` detections of the class, checks their colours, and
  needs every pair with the target's detections to hold; with one object per clause and no look-alike
  distractors, as in GenEval's prompts, both agree.)
* the relation rule is GenEval's (:func:`thinkgen.world.geometry.relation`) on the detected boxes.

Words: every word of ``texts`` must be read exactly (lowercase); no word of ``exclude_texts`` may be.

``correct`` is strict (every clause holds). ``score`` in [0, 1] is partial credit for rewards: the mean
of per-clause credits, where

* include: min(found, count) / count (a missing object costs 1/count, not everything);
* exclude: 1 if found < count, else max(0, 1 − (found − count + 1) / count) (each object too many costs
  1/count);
* text: the Flow-GRPO OCR reward of the target against its best-matching read word (1 when exact);
* exclude_text: 1 if the word is absent, else 0.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .detect import Detection, DetectedObject, Detector, DetectorConfig, ImageLike, WorldDetector
from .geometry import relation
from .scene import RELATIONS, Clause, Spec

ClauseKind = Literal["include", "exclude", "text", "exclude_text"]


# ----------------------------------------------------------------------------- text metrics


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each costing 1) between ``a`` and ``b``."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _normalise_text(text: str) -> str:
    return "".join(text.split()).lower()


def ocr_reward(target: str, recognised: str) -> float:
    """Flow-GRPO's OCR reward: 1 − dist / len(target) on lowercase text without spaces, where dist is 0
    if the target occurs in the recognised text, else min(Levenshtein, len(target)).

    Example:
        >>> ocr_reward("moon", "the MOON"), ocr_reward("moon", "loow")
        (1.0, 0.5)
    """
    target, recognised = _normalise_text(target), _normalise_text(recognised)
    if not target:
        raise ValueError("ocr_reward needs a non-empty target")
    dist = 0 if target in recognised else min(levenshtein(target, recognised), len(target))
    return 1.0 - dist / len(target)


def _similarity(a: str, b: str) -> float:
    """1 − normalised edit distance (Levenshtein / longer length); 1 for identical strings."""
    return 1.0 - levenshtein(a, b) / max(len(a), len(b), 1)


def _match_words(targets: Sequence[str], read: Sequence[str]) -> list[str | None]:
    """The read word each target is compared with: exact matches first (each read word used once), then
    the most similar unused word, or ``None`` when none is left."""
    pool = Counter(read)
    matched: list[str | None] = [None] * len(targets)
    for i, t in enumerate(targets):
        if pool[t] > 0:
            pool[t] -= 1
            matched[i] = t
    for i, t in enumerate(targets):
        if matched[i] is None:
            left = [w for w, n in pool.items() if n > 0]
            if left:
                best = max(left, key=lambda w: (_similarity(t, w), w))
                pool[best] -= 1
                matched[i] = best
    return matched


@dataclass(frozen=True)
class TextMetrics:
    """Text-rendering metrics of one image.

    Attributes:
        word_accuracy: share of target words read exactly (CVTG's word accuracy).
        ned: mean over targets of 1 − normalised edit distance to the matched read word (CVTG's NED,
            reported as a similarity: 1 is exact, 0 nothing in common or nothing read).
        ocr_reward: Flow-GRPO's OCR reward of all targets joined against all read words joined.
    """

    word_accuracy: float
    ned: float
    ocr_reward: float


def text_metrics(targets: Sequence[str], read: Sequence[str]) -> TextMetrics:
    """Word accuracy, NED and the Flow-GRPO OCR reward of the ``read`` words against ``targets``.

    Args:
        targets: the words the image should show (case and spaces are ignored).
        read: the words read from the image, in reading order.
    """
    if not targets:
        raise ValueError("text_metrics needs at least one target word")
    targets = [_normalise_text(t) for t in targets]
    read = [_normalise_text(w) for w in read]
    matched = _match_words(targets, read)
    exact = sum(m == t for t, m in zip(targets, matched))
    ned = sum(_similarity(t, m) if m is not None else 0.0 for t, m in zip(targets, matched)) / len(targets)
    return TextMetrics(exact / len(targets), ned, ocr_reward("".join(targets), "".join(read)))


# ----------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class ClauseResult:
    """How one clause of a spec fared.

    Attributes:
        kind: ``include``, ``exclude``, ``text`` or ``exclude_text``.
        index: position of the clause within its list in the spec.
        clause: the clause as in the spec's JSON (a word for text kinds).
        found: matching objects counted (for text kinds: the matched read word, or ``None``).
        satisfied: whether the clause holds.
        credit: partial credit in [0, 1] (see the module docstring).
    """

    kind: ClauseKind
    index: int
    clause: dict[str, Any] | str
    found: int | str | None
    satisfied: bool
    credit: float


@dataclass(frozen=True)
class SpecScore:
    """The judge's verdict on one image.

    Attributes:
        tag: the spec's sub-task tag.
        correct: every clause holds (GenEval's strict accuracy).
        score: mean clause credit in [0, 1], a dense reward.
        clauses: per-clause results, includes first, then excludes, texts, exclude_texts.
        text: text metrics when the spec asks for words, else ``None``.
    """

    tag: str
    correct: bool
    score: float
    clauses: tuple[ClauseResult, ...]
    text: TextMetrics | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _matches(obj: DetectedObject, clause: Clause) -> bool:
    return obj.shape == clause.shape and (clause.colour is None or obj.colour == clause.colour)


@functools.lru_cache(maxsize=2)
def _default_detector(read_words: bool) -> WorldDetector:
    return WorldDetector(DetectorConfig(read_words=read_words))


def score_spec(image: ImageLike | Detection, spec: Spec, detector: Detector | None = None) -> SpecScore:
    """Judge an image (or a detection of it) against ``spec``.

    Args:
        image: the image, or a :class:`~thinkgen.world.detect.Detection` already made of it.
        spec: what the image must show.
        detector: turns ``image`` into a detection; default a :class:`~thinkgen.world.detect.WorldDetector`
            with default thresholds that reads words only if the spec has any (reading needs the
            ``thinkgen[ocr]`` extra). Pass one built with ``DetectorConfig.for_world(world)`` for the
            tightest thresholds.

    Returns:
        A :class:`SpecScore`.

    Example:
        >>> result = score_spec(render(scene, 64), spec)
        >>> result.correct, result.score
        (True, 1.0)
    """
    if isinstance(image, Detection):
        detection = image
    else:
        detector = detector or _default_detector(bool(spec.texts or spec.exclude_texts))
        detection = detector.detect(image)
    objects = detection.objects
    clauses: list[ClauseResult] = []

    # 1. Includes, in order: a position clause refers to an earlier (or any) include's matches.
    matched: list[list[DetectedObject]] = [[o for o in objects if _matches(o, c)] for c in spec.include]
    holds = [len(m) >= c.count for m, c in zip(matched, spec.include)]
    for i, clause in enumerate(spec.include):
        found = len(matched[i])
        if clause.position is not None:
            rel, target = clause.position
            if rel not in RELATIONS or not 0 <= target < len(spec.include) or target == i:
                raise ValueError(
                    f"include[{i}] position {clause.position!r} is invalid; need (one of {RELATIONS}, "
                    f"index of another include clause in 0..{len(spec.include) - 1})"
                )
            anchors = matched[target] if holds[target] else []
            found = sum(any(rel in relation(o.box, a.box) for a in anchors) for o in matched[i])
        credit = min(found, clause.count) / clause.count
        clauses.append(ClauseResult("include", i, clause.to_dict(), found, found >= clause.count, credit))

    # 2. Excludes.
    for i, clause in enumerate(spec.exclude):
        found = sum(_matches(o, clause) for o in objects)
        over = found - clause.count + 1
        credit = 1.0 if over <= 0 else max(0.0, 1.0 - over / clause.count)
        clauses.append(ClauseResult("exclude", i, clause.to_dict(), found, over <= 0, credit))

    # 3. Words.
    read = [w.text for w in detection.words]
    text = None
    if spec.texts:
        targets = [_normalise_text(t) for t in spec.texts]
        words = _match_words(targets, [_normalise_text(w) for w in read])
        for i, (target, word) in enumerate(zip(targets, words)):
            credit = ocr_reward(target, word) if word is not None else 0.0
            clauses.append(ClauseResult("text", i, spec.texts[i], word, word == target, credit))
        text = text_metrics(spec.texts, read)
    read_set = {_normalise_text(w) for w in read}
    for i, word in enumerate(spec.exclude_texts):
        present = _normalise_text(word) in read_set
        found_word = word if present else None
        clauses.append(ClauseResult("exclude_text", i, word, found_word, not present, float(not present)))

    correct = all(c.satisfied for c in clauses)
    score = sum(c.credit for c in clauses) / len(clauses) if clauses else 1.0
    return SpecScore(spec.tag, correct, score, tuple(clauses), text)
