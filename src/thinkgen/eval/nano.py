"""The nano world's own benchmark: its test split, every scenario, judged by the world's exact judge.

Loader: no file; the first ``num_per_scenario`` samples of the test split of each scenario
(:func:`thinkgen.world.scenarios.generate`, so the same prompts on every machine). Edits carry their
rendered input images.

Layout: ``<root>/<scenario>/<0000>.png``; further images of a prompt ``<0000>_<k>.png``.

Scorer: :func:`thinkgen.world.score.score_spec` with a detector tuned to the world
(:meth:`~thinkgen.world.detect.DetectorConfig.for_world`); an image is correct when every clause of its
spec holds (GenEval's strict rule with exact colours), and its score is the mean clause credit. A
scenario's accuracy is the mean over its images; overall = the mean of the scenario accuracies. The mean
clause credit is reported per scenario as well, and the standard error of each accuracy over prompts
(``standard_error/<scenario>``, ``standard_error/overall``).

Where a scenario's prompts recall facts (the reasoning scenarios), its accuracy is also split by whether a
prompt asks for a fact the training split never shows (:data:`~thinkgen.world.knowledge.HELD_OUT_FACTS`):
``accuracy/held_out_facts/<scenario>`` and ``accuracy/known_facts/<scenario>``, with their prompt counts
(``num_prompts/…``). A model can only guess a held-out fact, so the known-fact accuracy measures the reasoning
and the held-out one what is left to chance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from ..world.knowledge import asks_held_out_fact
from ..world.scenarios import SCENARIOS, check_scenario, generate
from ..world.scene import Spec, WorldConfig, get_preset
from .runner import (
    STANDARD_ERROR,
    EvalItem,
    FileLayout,
    category_means,
    category_standard_errors,
    mean,
    suffixed,
)


def load_nano(
    num_per_scenario: int,
    scenarios: Sequence[str] = SCENARIOS,
    seed: int = 0,
    preset: str = "nano",
) -> list[EvalItem]:
    """The test-split prompts of the world: ``num_per_scenario`` per scenario, keys ``<scenario>/<0000>``.

    An item's ``index`` is its position in the run of every scenario at this ``num_per_scenario``, so a run
    of some scenarios draws the seeds (and, in batches that do not straddle two scenarios, the thoughts)
    that the run of all of them draws."""
    if num_per_scenario < 1:
        raise ValueError(f"num_per_scenario={num_per_scenario} must be >= 1")
    world = get_preset(preset)
    items = []
    for scenario in scenarios:
        check_scenario(scenario)
        offset = SCENARIOS.index(scenario) * num_per_scenario
        for i in range(num_per_scenario):
            sample = generate(scenario, i, config=world, seed=seed, split="test")
            meta = {"spec": sample.spec.to_dict(), "kind": sample.meta.get("kind"), "answer": sample.answer,
                    "held_out": sample.meta.get("held_out", False), "facts": list(sample.meta.get("facts", ())),
                    "preset": preset}
            items.append(EvalItem(f"{scenario}/{i:04d}", scenario, sample.instruction,
                                  tuple(sample.input_images()), meta, index=offset + i))
    return items


NANO_LAYOUT = FileLayout(lambda item, k: suffixed(item.key, k))


class NanoScorer:
    """The world's judge over generated images (see the module docstring).

    Args:
        world: the world the prompts come from (sets the detector's thresholds).
    """

    def __init__(self, world: WorldConfig | None = None) -> None:
        from ..world.detect import DetectorConfig, WorldDetector

        self.world = world or get_preset("nano")
        self.detector = WorldDetector(DetectorConfig.for_world(self.world))
        self.scorer_id = f"nano/world-judge-v2/{self.world.canvas_px}"  # v2: scores carry word accuracy

    def score(self, item: EvalItem, images: list[Image.Image], record: dict[str, Any]) -> dict[str, Any]:
        from ..world.score import score_spec

        spec = Spec.from_dict(item.meta["spec"])
        verdicts = [score_spec(image, spec, self.detector) for image in images]
        failed = [[f"{c.kind}[{c.index}] {c.clause} found {c.found}" for c in v.clauses if not c.satisfied]
                  for v in verdicts]
        return {
            "score": mean(v.score for v in verdicts),
            "passed": all(v.correct for v in verdicts),
            "accuracy": mean(float(v.correct) for v in verdicts),
            # Of the words asked for, the share read exactly, whatever else the image got right or wrong.
            "word_accuracy": mean(v.text.word_accuracy for v in verdicts) if spec.texts else None,
            "per_image": [{"correct": v.correct, "score": v.score, "reasons": r} for v, r in zip(verdicts, failed)],
        }

    def aggregate(self, samples: list[dict[str, Any]], items: Sequence[EvalItem]) -> dict[str, Any]:
        scored = [s for s in samples if s.get("error") is None]
        accuracy = category_means(scored, "accuracy")
        credit = category_means(scored)
        return {
            "overall": mean(accuracy.values()),
            "categories": accuracy,
            "metrics": {"mean_clause_credit": mean(s["score"] for s in scored),
                        **{f"clause_credit/{c}": v for c, v in credit.items()},
                        **{f"word_accuracy/{c}": v for c, v in category_means(scored, "word_accuracy").items()},
                        # With a few hundred prompts a scenario moves by a few points between seed sets.
                        **{f"{STANDARD_ERROR}{c}": v
                           for c, v in category_standard_errors(scored, "accuracy").items()},
                        **_accuracy_by_fact_knowledge(scored, items)},
            "scale": "exact-match accuracy in [0, 1]; overall = mean of the scenario accuracies",
        }


def _accuracy_by_fact_knowledge(scored: list[dict[str, Any]], items: Sequence[EvalItem]) -> dict[str, float]:
    """Accuracy and prompt count per scenario, split by whether the prompt asks for a held-out fact; only for
    scenarios whose prompts recall facts."""
    held_out = {item.key: asks_held_out_fact(item.meta.get("facts", ())) for item in items}
    recalling = {item.category for item in items if item.meta.get("facts")}
    metrics: dict[str, float] = {}
    for category in sorted(recalling):
        rows = [s for s in scored if s["category"] == category and s.get("accuracy") is not None]
        for name, wanted in (("held_out_facts", True), ("known_facts", False)):
            values = [s["accuracy"] for s in rows if held_out.get(s["key"]) is wanted]
            metrics[f"num_prompts/{name}/{category}"] = len(values)
            if values:
                metrics[f"accuracy/{name}/{category}"] = mean(values)
    return metrics
