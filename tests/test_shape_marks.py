"""Shape marks (``glyph_shapes``): object marks and the objects edit marks draw are silhouettes of the shapes,
exactly where the objects' ink goes and blind to their colours; the planner gives each drawn object the shape
the edit asks for; the trainer and the pipeline draw them where the config says so, and only there."""

from __future__ import annotations

import random

import numpy as np
import pytest
from train_recipes import sft_recipe

from thinkgen.glyphs import (
    OBJECT_MARK_RGB,
    EditMarks,
    ObjectMark,
    plan_edit_glyphs,
    plan_glyphs,
    planned_edit,
    render_edit_marks,
    render_glyphs,
)
from thinkgen.pipeline import PipelineConfig, ThinkGenPipeline
from thinkgen.train.config import DataConfig, SourceConfig, load_recipe
from thinkgen.train.data import WorldSource
from thinkgen.train.sft import training_item
from thinkgen.world import edits
from thinkgen.world.detect import DetectedObject, Detection
from thinkgen.world.render import render
from thinkgen.world.scenarios import generate
from thinkgen.world.scene import Scene, SceneObject, get_preset
from tiny_pipeline import build_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

NANO = get_preset("nano")


def _ink(image) -> np.ndarray:
    return (np.asarray(image) != 255).any(axis=2)


def test_a_shape_mark_is_the_silhouette_of_the_object_in_the_mark_grey():
    for index in range(12):
        scene = generate("composition", index, config=NANO, seed=3, split="train").target
        marks = render_glyphs((), 64, 64, 64, objects=scene.objects, shapes=True)
        assert (_ink(marks) == _ink(render(Scene(scene.objects), 64))).all()  # where the ink is, and only there
        pixels = np.asarray(marks)[_ink(marks)]
        assert (pixels.min(axis=1) == pixels.max(axis=1)).all()  # grey, whatever the objects' colours
        assert (pixels == OBJECT_MARK_RGB).all(axis=1).mean() > 0.5  # inside: the mark grey; edges: softened
    # The box mark fills the whole box; a star's silhouette leaves its corners white.
    star = SceneObject("star", "red", 0.5, 0.5, 0.4)  # its box: pixels 19.2 to 44.8
    boxed, shaped = (np.asarray(render_glyphs((), 64, 64, 64, objects=[star], shapes=s)) for s in (False, True))
    assert tuple(boxed[21, 21]) == OBJECT_MARK_RGB and tuple(shaped[21, 21]) == (255, 255, 255)


def test_edit_marks_draw_silhouettes_of_the_drawn_objects():
    box = (0.25, 0.25, 0.75, 0.75)
    marks = EditMarks(erased=((0.0, 0.0, 0.2, 0.2),), drawn=(ObjectMark("circle", box),))
    shaped, boxed = (np.asarray(render_edit_marks(marks, 64, 64, 64, shapes=s)) for s in (True, False))
    assert tuple(shaped[17, 17]) == (255, 255, 255) and tuple(boxed[17, 17]) == OBJECT_MARK_RGB  # a corner
    assert tuple(shaped[32, 32]) == OBJECT_MARK_RGB and (shaped[:12, :12] == boxed[:12, :12]).all()
    circle = render(Scene((SceneObject("circle", "red", 0.5, 0.5, 0.5),)), 64)
    assert (_ink(shaped)[14:, 14:] == _ink(circle)[14:, 14:]).all()  # away from the erased corner


def test_the_planner_draws_the_shape_each_edit_asks_for():
    left, right = (0.04, 0.37, 0.29, 0.62), (0.71, 0.37, 0.96, 0.62)
    detection = Detection((DetectedObject("square", "orange", left, 1.0), DetectedObject("star", "blue", right, 1.0)))
    rng = random.Random(0)
    assert planned_edit("replace the orange square with a red circle", detection, NANO, rng) == EditMarks(
        drawn=(ObjectMark("circle", left),))
    assert planned_edit("make the star green", detection, NANO, rng) == EditMarks(drawn=(ObjectMark("star", right),))
    (added,) = planned_edit("add one purple triangle", detection, NANO, rng).drawn
    assert added.shape == "triangle"
    moved = planned_edit("move the star below the orange square", detection, NANO, rng)
    assert moved.erased == (right,) and moved.drawn[0].shape == "star"


def test_training_items_carry_shape_marks_where_the_recipe_asks():
    data = DataConfig()
    source = WorldSource(SourceConfig(scenarios=["composition", "edit"]))
    seen = set()
    for index in range(24):
        record = source.load(index)
        item = training_item(record, data, glyphs=True, glyph_objects=True, glyph_edits=True, glyph_shapes=True)
        if record.input_images and record.edit_marks:
            expected = render_edit_marks(record.edit_marks, 64, 64, 64, shapes=True)
            assert item["refs"][1].tobytes() == expected.tobytes()
            seen.add("edit")
        elif not record.input_images and record.target_objects:
            expected = render_glyphs(record.target_words, 64, 64, 64, objects=record.target_objects, shapes=True)
            assert item["refs"][0].tobytes() == expected.tobytes()
            seen.add("composition")
    assert seen == {"edit", "composition"}


def test_shape_marks_reach_the_dit_and_the_saved_config(tmp_path):
    plain = build_tiny_pipeline()
    config = {**plain.config.__dict__, "glyph_preset": "nano", "glyph_objects": True, "glyph_edits": True}
    boxes = ThinkGenPipeline(plain.mllm, plain.transformer, plain.codec, PipelineConfig(**config))
    shapes = ThinkGenPipeline(plain.mllm, plain.transformer, plain.codec,
                              PipelineConfig(**{**config, "glyph_shapes": True}))
    expected = plan_glyphs("two red stars", "nano", 16, 16, "0:0", objects=True, shapes=True)
    assert shapes("two red stars", seed=0).glyphs[0].tobytes() == expected.tobytes()
    assert boxes("two red stars", seed=0).glyphs[0].tobytes() != expected.tobytes()
    plan = edits.replace(random.Random(3), NANO)
    image = render(plan.source, 64)
    edit_expected = plan_edit_glyphs(plan.answer, image, "nano", 64, 64, "0:0", shapes=True)
    assert edit_expected is not None
    assert shapes(plan.answer, images=[image], seed=0).glyphs[0].tobytes() == edit_expected.tobytes()
    shapes.save_pretrained(tmp_path / "p")
    assert ThinkGenPipeline.from_pretrained(tmp_path / "p").config.glyph_shapes is True
    with pytest.raises(ValueError, match="glyph_shapes"):
        PipelineConfig(glyph_preset="nano", glyph_shapes=True)
    recipe = sft_recipe(tmp_path, extra='stage = "dit"')
    recipe.write_text(recipe.read_text().replace('mllm = "tiny"', 'mllm = "tiny"\nglyph_preset = "nano"'))
    with pytest.raises(ValueError, match="glyph_shapes"):
        load_recipe(recipe, ["model.glyph_shapes=true"])
    assert load_recipe(recipe, ["model.glyph_edits=true", "model.glyph_shapes=true"]).model.glyph_shapes
