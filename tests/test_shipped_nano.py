"""The shipped ThinkGen-Nano: small, safetensors only, runs from the command line with nothing but a
prompt, and draws what it is asked (held-out prompts, fixed seeds, scored by the world's judge)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from thinkgen.cli import main
from thinkgen.eval.nano import NanoScorer, load_nano
from thinkgen.pipeline import SHIPPED_MODELS, PipelineConfig, ThinkGenPipeline

SHIPPED = SHIPPED_MODELS["nano"]


@pytest.fixture(scope="module")
def nano() -> ThinkGenPipeline:
    return ThinkGenPipeline.from_pretrained("nano")


def test_shipped_model_is_small_and_safetensors_only():
    files = [p for p in SHIPPED.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 20 * 2**20
    assert {p.suffix for p in files} & {".bin", ".pt", ".pth", ".pkl", ".ckpt"} == set()
    assert {p.parent.name for p in files if p.suffix == ".safetensors"} == {"transformer", "vae", "mllm"}


def test_a_resaved_model_names_no_folder_it_was_loaded_from(nano, tmp_path):
    nano.save_pretrained(tmp_path / "copy")
    for config in [*(tmp_path / "copy").glob("*/config.json"), *SHIPPED.glob("*/config.json")]:
        assert "_name_or_path" not in json.loads(config.read_text()), f"{config} names a folder of one machine"


def test_generate_needs_nothing_but_the_prompt(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "one red circle"]) == 0
    images = sorted((tmp_path / "outputs").glob("*.png"))
    assert len(images) == 1 and Image.open(images[0]).size == (64, 64)


def test_draws_reasoning_prompts_only_when_it_thinks(nano):
    """Composition and reasoning prompts of the test split, fixed seeds, scored by the world's judge.
    Measured on the shipped model: 26/32 correct with thinking (reasoning 13/16), 15/32 without (reasoning
    1/16: a riddle's objects are the MLLM's to work out); the floors leave room for float differences
    between machines."""
    items = load_nano(16, scenarios=["composition", "reasoning"])
    scorer = NanoScorer()

    def accuracy(think: bool) -> tuple[float, float]:
        out = nano([i.prompt for i in items], think=think, seed=0)
        scores = [scorer.score(i, [image], {})["accuracy"] for i, image in zip(items, out.images)]
        return sum(scores) / len(items), sum(scores[16:]) / 16

    (with_thinking, reasoning), (without, reasoning_without) = accuracy(True), accuracy(False)
    assert with_thinking > without
    assert reasoning >= 0.5 and reasoning_without <= 0.15


def test_draws_the_objects_its_shape_marks_show(nano):
    """Composition prompts of the test split, no thinking (the planner reads the prompt itself), fixed seeds.
    Measured on the shipped model: 27/32 with shape marks, 6/32 without any glyph reference."""
    items = load_nano(32, scenarios=["composition"])
    scorer = NanoScorer()

    def accuracy(glyphs: bool) -> float:
        out = nano([i.prompt for i in items], think=False, seed=0, glyphs=glyphs)
        return sum(scorer.score(i, [image], {})["accuracy"] for i, image in zip(items, out.images)) / len(items)

    with_marks, without = accuracy(True), accuracy(False)
    assert with_marks >= 0.6
    assert with_marks > without + 0.3


def test_writes_the_words_it_is_asked_for_from_their_glyphs(nano):
    """Text prompts of the test split, no thinking, fixed seeds: the share of asked-for words the judge reads.
    Measured on the shipped model: 15/16 with glyph references, 0/16 without."""
    items = load_nano(16, scenarios=["text"])
    scorer = NanoScorer()

    def words_read(glyphs: bool) -> float:
        out = nano([i.prompt for i in items], think=False, seed=0, glyphs=glyphs)
        assert all((g is not None) == glyphs for g in out.glyphs)
        return sum(scorer.score(i, [image], {})["word_accuracy"] for i, image in zip(items, out.images)) / len(items)

    assert words_read(True) >= 0.7
    assert words_read(False) <= 0.2


def test_edits_where_its_edit_marks_point(nano):
    """Plain edits of the test split, no thinking (the planner reads their own words), fixed seeds: exact
    accuracy by the world's judge. Measured on the shipped model: 12/32 with edit marks, 3/32 without (the
    nano-bench gives 0.570 with them on 300 edits)."""
    items = load_nano(32, scenarios=["edit"])
    scorer = NanoScorer()

    def accuracy(glyphs: bool) -> float:
        out = nano([i.prompt for i in items], images=[list(i.input_images) for i in items], think=False, seed=0,
                   glyphs=glyphs)
        assert sum(g is not None for g in out.glyphs) == (len(items) if glyphs else 0)
        return sum(scorer.score(i, [image], {})["accuracy"] for i, image in zip(items, out.images)) / len(items)

    with_marks, without = accuracy(True), accuracy(False)
    assert with_marks >= 8 / 32
    assert with_marks > without


def test_moves_an_object_its_coloured_mark_shows(nano):
    """The first 16 moves of the test split's plain edits, no thinking, fixed seeds: exact accuracy by the world's
    judge, with a moved object's mark in its colour (as the model was trained) and in the mark grey. Measured on
    the shipped model: 13/16 coloured, 9/16 grey (the model before coloured moves: 12 of the 42 moves of the
    300-prompt nano-bench without thinking)."""
    items = [i for i in load_nano(120, scenarios=["edit"]) if i.meta["kind"] == "move"][:16]
    grey = ThinkGenPipeline(nano.mllm, nano.transformer, nano.codec,
                            PipelineConfig(**{**nano.config.__dict__, "glyph_move_colours": False}))
    scorer = NanoScorer()

    def accuracy(pipe: ThinkGenPipeline) -> float:
        out = pipe([i.prompt for i in items], images=[list(i.input_images) for i in items], think=False, seed=0)
        return sum(scorer.score(i, [image], {})["accuracy"] for i, image in zip(items, out.images)) / len(items)

    assert nano.config.glyph_move_colours and len(items) == 16
    coloured, in_grey = accuracy(nano), accuracy(grey)
    assert coloured >= 0.6
    assert coloured >= in_grey + 2 / 16
