"""Benchmark generation: recorded seeds, batching that does not change images, resume after an interruption."""

from __future__ import annotations

import dataclasses
import json

import pytest
from eval_support import tiny_pipeline

from thinkgen.eval.nano import NANO_LAYOUT, NanoScorer, load_nano
from thinkgen.eval.runner import MANIFEST, FileLayout, GenerationConfig, generate_mode, load_manifest, score_mode


def _items(num: int = 3):
    return load_nano(num, ["composition"])


class CountingPipeline:
    """The tiny pipeline, recording the prompts of every call."""

    def __init__(self) -> None:
        self.pipe = tiny_pipeline()
        self.prompts: list[list[str]] = []

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, prompts, **kwargs):
        self.prompts.append(list(prompts))
        return self.pipe(prompts, **kwargs)


def _bytes(root, records):
    return [(root / p).read_bytes() for r in records for p in r["images"]]


CONFIG = GenerationConfig(num_images_per_prompt=2, seed=10, batch_size=2, max_thinking_tokens=4,
                          max_instruction_tokens=3)


def test_seeds_are_recorded_and_batching_does_not_change_images(tmp_path) -> None:
    items = _items()
    records, stats = generate_mode(tiny_pipeline, items, NANO_LAYOUT, tmp_path / "a", False, CONFIG)
    assert [r["seeds"] for r in records] == [[10, 11], [12, 13], [14, 15]]  # seed + i·N + k
    assert stats.num_images_generated == 6 and records[1]["images"] == ["composition/0001.png",
                                                                        "composition/0001_1.png"]
    one_by_one = GenerationConfig(**{**CONFIG.__dict__, "batch_size": 1})
    again, _ = generate_mode(tiny_pipeline, items, NANO_LAYOUT, tmp_path / "b", False, one_by_one)
    assert _bytes(tmp_path / "a", records) == _bytes(tmp_path / "b", again)


def test_a_run_of_some_scenarios_draws_the_seeds_and_images_of_the_run_of_all(tmp_path) -> None:
    whole = load_nano(2, ["composition", "text", "reasoning"])
    part = load_nano(2, ["reasoning"])
    assert [it.key for it in part] == [it.key for it in whole[-2:]]
    full, _ = generate_mode(tiny_pipeline, whole, NANO_LAYOUT, tmp_path / "whole", True, CONFIG)
    alone, _ = generate_mode(tiny_pipeline, part, NANO_LAYOUT, tmp_path / "part", True, CONFIG)
    # reasoning is the fourth scenario: its prompts are 6 and 7 of the run of every scenario at 2 each
    assert [r["seeds"] for r in alone] == [r["seeds"] for r in full[-2:]] == [[22, 23], [24, 25]]
    assert [r["instruction"] for r in alone] == [r["instruction"] for r in full[-2:]]
    assert _bytes(tmp_path / "part", alone) == _bytes(tmp_path / "whole", full[-2:])


def test_an_unknown_scenario_is_named_with_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="unknown scenario 'compositon'; allowed: composition"):
        load_nano(2, ["compositon"])


def test_two_prompts_with_one_index_are_refused(tmp_path) -> None:
    a, b = _items(2)
    clash = dataclasses.replace(b, index=a.index)
    with pytest.raises(ValueError, match="duplicate indices"):
        generate_mode(tiny_pipeline, [a, clash], NANO_LAYOUT, tmp_path, False, CONFIG)


def test_interrupted_run_resumes_without_regenerating(tmp_path) -> None:
    items = _items()
    reference, _ = generate_mode(tiny_pipeline, items, NANO_LAYOUT, tmp_path / "whole", True, CONFIG)

    writes = []

    def crash_on_third(item, k):
        writes.append(item.key)
        if item.key == items[2].key:
            raise KeyboardInterrupt  # the user stops the run in the second batch
        return NANO_LAYOUT.path_of(item, k)

    root = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        generate_mode(tiny_pipeline, items, FileLayout(crash_on_third), root, True, CONFIG)
    assert list(load_manifest(root)) == [items[0].key, items[1].key]
    with open(root / MANIFEST, "a") as f:
        f.write('{"key": "composition/00')  # and a torn line, as a kill during an append leaves
    pipe = CountingPipeline()
    records, stats = generate_mode(lambda: pipe, items, NANO_LAYOUT, root, True, CONFIG)
    assert pipe.prompts == [[items[2].prompt]] and stats.num_prompts_done_before == 2
    assert [r["key"] for r in records] == [it.key for it in items]
    assert _bytes(root, records) == _bytes(tmp_path / "whole", reference)
    assert [r["reasoning"] for r in records] == [r["reasoning"] for r in reference]
    # A finished run generates nothing: the pipeline is not even loaded.
    generate_mode(lambda: pytest.fail("loaded the pipeline"), items, NANO_LAYOUT, root, True, CONFIG)


def test_resume_refuses_other_settings(tmp_path) -> None:
    items = _items(1)
    generate_mode(tiny_pipeline, items, NANO_LAYOUT, tmp_path, False, CONFIG)
    other = GenerationConfig(**{**CONFIG.__dict__, "seed": 11})
    with pytest.raises(ValueError, match=r"other settings \(seed: 10 → 11\)"):
        generate_mode(tiny_pipeline, items, NANO_LAYOUT, tmp_path, False, other)


def test_a_run_older_than_a_setting_resumes_with_its_default(tmp_path) -> None:
    items = _items(2)
    generate_mode(tiny_pipeline, items[:1], NANO_LAYOUT, tmp_path, False, CONFIG)
    saved = json.loads((tmp_path / "run.json").read_text())
    del saved["glyphs"]  # as written before glyph references existed
    (tmp_path / "run.json").write_text(json.dumps(saved))
    records, stats = generate_mode(tiny_pipeline, items, NANO_LAYOUT, tmp_path, False, CONFIG)
    assert stats.num_prompts_done_before == 1 and len(records) == 2
    with pytest.raises(ValueError, match=r"glyphs: True → False"):
        generate_mode(tiny_pipeline, items, NANO_LAYOUT, tmp_path, False,
                      GenerationConfig(**{**CONFIG.__dict__, "glyphs": False}))


def test_scores_are_cached_per_scorer(tmp_path) -> None:
    items = _items(2)
    records, _ = generate_mode(tiny_pipeline, items, NANO_LAYOUT, tmp_path, False, CONFIG)
    scorer = NanoScorer()
    first = score_mode(scorer, items, records, NANO_LAYOUT, tmp_path, 2)
    assert [s["key"] for s in first] == [it.key for it in items]
    assert all(0.0 <= s["score"] <= 1.0 and len(s["per_image"]) == 2 for s in first)

    class Failing(NanoScorer):
        def score(self, *args):
            raise AssertionError("cached scores must be reused")

    failing = Failing()
    assert score_mode(failing, items, records, NANO_LAYOUT, tmp_path, 2) == first
    lines = (tmp_path / "scores.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["scorer_id"] == scorer.scorer_id


def test_nano_scorer_accepts_the_world_targets() -> None:
    from thinkgen.world.scenarios import generate

    scorer = NanoScorer()
    for scenario in ("composition", "edit", "reasoning"):
        items = load_nano(2, [scenario])
        for i, item in enumerate(items):
            target = generate(scenario, i, split="test").target_image()
            result = scorer.score(item, [target], {})
            assert result["passed"] and result["score"] == 1.0, (item.key, result)


def test_nano_scorer_reports_the_words_read_apart_from_the_objects() -> None:
    """A text prompt with an object, drawn with its words but without the object: not correct, every word
    read. (The text scenario's accuracy needs both; word accuracy is the words alone.)"""
    import dataclasses

    from thinkgen.world.render import render
    from thinkgen.world.scenarios import generate
    from thinkgen.world.scene import Scene

    scorer = NanoScorer()
    items = load_nano(30, ["text"])
    index, item = next((i, it) for i, it in enumerate(items) if it.meta["spec"]["include"])
    target = generate("text", index, split="test").target
    words_only = render(dataclasses.replace(target, objects=()), 64)
    blank = render(Scene(), 64)
    scores = [dict(scorer.score(item, [image], {}), category="text") for image in (words_only, blank)]
    assert [(s["accuracy"], s["word_accuracy"]) for s in scores] == [(0.0, 1.0), (0.0, 0.0)]
    assert scorer.aggregate(scores, [item, item])["metrics"]["word_accuracy/text"] == 0.5
    assert scorer.score(load_nano(1, ["composition"])[0], [blank], {})["word_accuracy"] is None


def test_nano_summary_gives_each_accuracy_its_standard_error() -> None:
    """Per scenario the sample standard deviation of the prompts' accuracies over √n; overall, the standard
    error of the mean of the scenario accuracies (the root of the summed squares over the count)."""
    items = load_nano(4, ["composition", "text"])
    rows = [{"category": "composition", "accuracy": a, "score": a, "error": None} for a in (1.0, 1.0, 0.0, 1.0)]
    rows += [{"category": "text", "accuracy": a, "score": a, "error": None, "word_accuracy": 1.0}
             for a in (0.0, 1.0, 0.0, 1.0)]
    metrics = NanoScorer().aggregate(rows, items)["metrics"]
    composition, text = (0.75 / 3 / 4) ** 0.5, (1.0 / 3 / 4) ** 0.5  # sums of squared deviations 0.75, 1
    assert metrics["standard_error/composition"] == pytest.approx(composition)
    assert metrics["standard_error/text"] == pytest.approx(text)
    assert metrics["standard_error/overall"] == pytest.approx((composition**2 + text**2) ** 0.5 / 2)
    single = NanoScorer().aggregate(rows[:1], items)["metrics"]
    assert single["standard_error/composition"] is None and single["standard_error/overall"] is None


def test_nano_summary_splits_reasoning_by_whether_its_fact_was_held_out_of_training() -> None:
    """Reasoning prompts that ask for a fact the training split never shows are scored apart from the rest,
    and scenarios that recall no facts get no such split."""
    from thinkgen.world.knowledge import HELD_OUT_FACTS

    items = load_nano(40, ["composition", "reasoning"])
    unseen = {it.key for it in items if set(it.meta["facts"]) & HELD_OUT_FACTS}
    known = {it.key for it in items if it.category == "reasoning"} - unseen
    assert unseen and known and all(it.category == "reasoning" for it in items if it.key in unseen)
    # Right on every known fact, and on the first held-out one only.
    first = min(unseen)
    rows = [{"key": it.key, "category": it.category, "error": None,
             "accuracy": float(it.key in known or it.key == first or it.category == "composition")}
            for it in items]
    for row in rows:
        row["score"] = row["accuracy"]
    metrics = NanoScorer().aggregate(rows, items)["metrics"]
    assert metrics["accuracy/known_facts/reasoning"] == 1.0
    assert metrics["accuracy/held_out_facts/reasoning"] == pytest.approx(1 / len(unseen))
    assert (metrics["num_prompts/known_facts/reasoning"], metrics["num_prompts/held_out_facts/reasoning"]) == (
        len(known), len(unseen))
    assert not any(name.endswith("/composition") and "facts" in name for name in metrics)


def test_a_thought_never_closed_does_not_stop_a_run():
    from thinkgen.eval.runner import GenerationConfig, _thinking

    assert _thinking(GenerationConfig(), seed=0).on_missing_think_end == "all"


def test_paired_differences_are_per_prompt_with_their_standard_error() -> None:
    """B − A per category over the prompts both runs scored, the nano judge's accuracy before the score; the
    standard error is the sample standard deviation of the differences over √n."""
    from thinkgen.eval.report import paired_differences

    def record(category, accuracy, score=0.5):
        return {"category": category, "accuracy": accuracy, "score": score, "error": None}

    a = {"c/0": record("c", 0.0), "c/1": record("c", 1.0), "c/2": record("c", 0.0), "c/3": record("c", 1.0),
         "w/0": {"category": "w", "score": 2.0, "error": None}, "x/0": record("x", 1.0)}
    b = {"c/0": record("c", 1.0), "c/1": record("c", 1.0), "c/2": record("c", 1.0), "c/3": record("c", 0.0),
         "w/0": {"category": "w", "score": 5.0, "error": None}, "x/0": {**record("x", 0.0), "error": "boom"}}
    paired = paired_differences(a, b, ["c/0", "c/1", "c/2", "c/3", "w/0", "x/0", "missing"])
    # c: differences 1, 0, 1, -1 -> mean 0.25, sample variance (0.5625 + 0.0625 + 0.5625 + 1.5625) / 3
    assert paired["c"]["prompts"] == 4 and paired["c"]["b_minus_a"] == pytest.approx(0.25)
    assert paired["c"]["standard_error"] == pytest.approx((2.75 / 3 / 4) ** 0.5)
    assert paired["w"] == {"prompts": 1, "b_minus_a": 3.0, "standard_error": 0.0}  # no accuracy: the score
    assert "x" not in paired  # a prompt B could not score is left out
