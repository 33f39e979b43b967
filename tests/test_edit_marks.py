"""Edit marks: the training marks are exactly what an edit changes, the planner reads the edits the world
writes and marks the same places (or places the world would pick), and the trainer and the pipeline give
the DiT the marks as a second reference beside the input image."""

from __future__ import annotations

import random

import numpy as np
import pytest
from train_recipes import sft_recipe

from thinkgen.glyphs import (
    ERASE_MARK_RGB,
    OBJECT_MARK_RGB,
    EditMarks,
    ObjectMark,
    edit_marks,
    plan_edit_glyphs,
    planned_edit,
    render_edit_marks,
)
from thinkgen.pipeline import PipelineConfig, ThinkGenPipeline
from thinkgen.train.config import DataConfig, SourceConfig, load_recipe
from thinkgen.train.data import WorldSource
from thinkgen.train.sft import training_item
from thinkgen.world import edits
from thinkgen.world.detect import DetectedObject, Detection, DetectorConfig, WorldDetector
from thinkgen.world.geometry import holds_clearly
from thinkgen.world.render import render
from thinkgen.world.scenarios import generate
from thinkgen.world.scene import COLOURS, Scene, get_preset
from tiny_pipeline import build_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

NANO = get_preset("nano")


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def _overlaps(a, b) -> bool:
    return _iou(a, b) > 0.05


@pytest.mark.parametrize("kind", edits.EDIT_KINDS)
def test_the_training_marks_are_what_the_edit_changes(kind):
    rng = random.Random(5)
    for _ in range(10):
        plan = edits.OPERATIONS[kind](rng, NANO)
        marks = edit_marks(plan.source, plan.target, NANO.canvas_px)
        subject = plan.source.objects[plan.subject].box() if plan.subject is not None else None
        if kind == "remove":
            assert marks == EditMarks(erased=(subject,))
        elif kind in ("recolour", "replace"):  # drawn over in place, nothing erased; in the target's shape
            assert marks == EditMarks(drawn=(ObjectMark(plan.target.objects[plan.subject].shape, subject),))
        elif kind == "add":
            new = plan.target.objects[len(plan.source.objects):]
            assert marks == EditMarks(drawn=tuple(ObjectMark(o.shape, o.box()) for o in new))
            assert len(marks.drawn) == plan.fields["count"]
        elif kind == "move":  # the moved object keeps its colour; new and recoloured ones take theirs from the text
            moved = plan.target.objects[plan.subject]
            assert marks == EditMarks(erased=(subject,), drawn=(ObjectMark(moved.shape, moved.box(), moved.colour),))
        else:  # relabel: the old word's box erased, the new word written where it was
            (old,), (new,) = plan.source.words, plan.target.words
            assert marks.words == (new,) and not marks.drawn
            (erased,) = marks.erased
            assert erased[0] < old.x < erased[2] and erased[1] < old.y < erased[3]
    assert not edit_marks(plan.source, plan.source, NANO.canvas_px)  # no change, no marks


def test_marks_are_drawn_as_two_greys_and_glyphs():
    word = generate("text", 0, config=NANO, seed=0, split="train").target.words[0]
    marks = EditMarks(erased=((0.0, 0.0, 0.3, 0.3),), drawn=(ObjectMark("star", (0.7, 0.7, 1.0, 1.0)),), words=(word,))
    image = np.asarray(render_edit_marks(marks, 64, 64, 64))
    assert tuple(image[5, 5]) == ERASE_MARK_RGB and tuple(image[60, 60]) == OBJECT_MARK_RGB
    glyphs = np.asarray(render(Scene(words=(word,)), 64))
    ink = glyphs.sum(axis=2) < 300  # the word's dark pixels are the word's, whatever lies under them
    assert ink.any() and (image[ink] == glyphs[ink]).all()
    # A new word written over an erased old one stands on white: the erase grey shows only beyond it.
    (old,) = Detection.from_scene(Scene(words=(word,)), 64).words
    over = np.asarray(render_edit_marks(EditMarks(erased=((0.0, 0.0, 1.0, 1.0),), words=(word,)), 64, 64, 64))
    x0, y0, x1, y1 = (round(v * 64) for v in old.box)
    assert (over[y0:y1, x0:x1].sum(axis=2) > 3 * 200).mean() > 0.5 and tuple(over[0, 0]) == ERASE_MARK_RGB
    assert render_edit_marks(marks, 32, 32, 64).size == (32, 32)


def _check_plan(planned: EditMarks, truth: EditMarks, sample) -> None:
    assert (len(planned.erased), len(planned.drawn), len(planned.words)) == (
        len(truth.erased), len(truth.drawn), len(truth.words)), sample.answer
    kind = sample.meta["kind"]
    # A reflection that removes one of several alike objects may erase any of them.
    alike = [o.box() for o in sample.inputs[0].objects] if kind == "count" else list(truth.erased)
    for box in planned.erased:
        assert max(_iou(box, other) for other in alike) > 0.6, sample.answer
    assert [w.text for w in planned.words] == [w.text for w in truth.words]
    # Each drawn object in the shape the target draws there, a moved one in its colour.
    assert sorted((m.shape, m.colour) for m in planned.drawn) == sorted((m.shape, m.colour) for m in truth.drawn), \
        sample.answer
    if kind in ("recolour", "replace", "colour", "shape"):  # in place
        for a, b in zip(sorted(planned.drawn, key=lambda m: m.box), sorted(truth.drawn, key=lambda m: m.box)):
            assert _iou(a.box, b.box) > 0.6 and a.shape == b.shape, sample.answer
    else:  # new places: clear of everything the input keeps
        kept = [o.box() for o in sample.inputs[0].objects if o.box() not in truth.erased]
        for mark in planned.drawn:
            assert not any(_overlaps(mark.box, other) for other in kept + list(planned.erased)), sample.answer


@pytest.mark.parametrize("scenario", ["edit", "reasoning_edit", "reflection"])
def test_the_planner_marks_what_the_worlds_edits_change(scenario):
    """After thinking, the instruction is the world's answer: on the input image as the detector sees it, the
    planner erases and draws where the target changes (new objects in free places of the grid). The one edit
    it cannot follow is a reflection that moves two objects back while naming one move."""
    detector = WorldDetector(DetectorConfig.for_world(NANO))
    planned_count = 0
    for index in range(60):
        sample = generate(scenario, index, config=NANO, seed=4, split="test")
        truth = edit_marks(sample.inputs[0], sample.target, NANO.canvas_px)
        planned = planned_edit(sample.answer, detector.detect(sample.input_images()[0]), NANO, random.Random(index))
        if not truth:
            assert planned is None  # "The image already matches the prompt."
        elif scenario == "reflection" and sample.meta["kind"] == "position":
            continue
        else:
            _check_plan(planned, truth, sample)
            planned_count += 1
    assert planned_count >= 40


def test_the_planner_reads_varied_words_and_leaves_riddles_to_the_mllm():
    detector = WorldDetector(DetectorConfig.for_world(NANO))
    for index in range(40):  # the plain edits' own varied instructions
        sample = generate("edit", index, config=NANO, seed=6, split="test")
        truth = edit_marks(sample.inputs[0], sample.target, NANO.canvas_px)
        _check_plan(planned_edit(sample.instruction, detector.detect(sample.input_images()[0]), NANO,
                                 random.Random(0)), truth, sample)
    sample = generate("reasoning_edit", 0, config=NANO, seed=6, split="test")
    detection = detector.detect(sample.input_images()[0])
    assert planned_edit(sample.instruction, detection, NANO, random.Random(0)) is None
    scene = edits.remove(random.Random(1), NANO).source
    detection = detector.detect(render(scene, 64))
    for unknown in ("remove the hexagon", "add one red star for each leg of a horse", "rotate the star",
                    "The image already matches the prompt.", "remove the circle and the square"):
        assert planned_edit(unknown, detection, NANO, random.Random(0)) is None, unknown


def test_the_planner_finds_the_object_a_description_fits_best():
    """One wrong word (the shape, or the colour) still finds an object where no other fits as well; a tie,
    or a description that fits nothing, finds none."""
    def detection(*objects):
        return Detection(tuple(DetectedObject(shape, colour, box, 1.0) for shape, colour, box in objects))

    left, right = (0.04, 0.37, 0.29, 0.62), (0.71, 0.37, 0.96, 0.62)
    orange_square_blue_star = detection(("square", "orange", left), ("star", "blue", right))
    for instruction in ("remove the orange triangle", "remove the red square", "remove the square"):
        assert planned_edit(instruction, orange_square_blue_star, NANO, random.Random(0)) == EditMarks(
            erased=(left,)), instruction
    orange_square_blue_triangle = detection(("square", "orange", left), ("triangle", "blue", right))
    for instruction in ("remove the orange triangle", "remove the red circle", "remove the circle"):
        assert planned_edit(instruction, orange_square_blue_triangle, NANO, random.Random(0)) is None, instruction


def test_a_moved_object_goes_where_the_relation_holds():
    detector = WorldDetector(DetectorConfig.for_world(NANO))
    rng = random.Random(2)
    for _ in range(20):
        plan = edits.move(rng, NANO)
        detection = detector.detect(render(plan.source, 64))
        marks = planned_edit(plan.answer, detection, NANO, rng)
        anchor = plan.source.objects[plan.anchor].box()
        (drawn,) = marks.drawn
        assert holds_clearly(plan.fields["relation"], drawn.box, anchor), plan.answer
        subject = plan.source.objects[plan.subject]
        assert (drawn.shape, drawn.colour) == (subject.shape, subject.colour)


def test_a_moved_object_is_drawn_in_its_colour_where_the_model_reads_colours():
    moved, new = ObjectMark("circle", (0.0, 0.0, 0.5, 0.5), "red"), ObjectMark("square", (0.5, 0.5, 1.0, 1.0))
    marks = EditMarks(drawn=(moved, new))
    image = np.asarray(render_edit_marks(marks, 64, 64, 64, shapes=True, colours=True))
    assert tuple(image[16, 16]) == COLOURS["red"] and tuple(image[48, 48]) == OBJECT_MARK_RGB
    grey = np.asarray(render_edit_marks(marks, 64, 64, 64, shapes=True))
    assert tuple(grey[16, 16]) == OBJECT_MARK_RGB
    with pytest.raises(ValueError, match="shapes"):
        render_edit_marks(marks, 64, 64, 64, colours=True)
    # Training draws them so too, and only for a model that reads them.
    record = next(r for i in range(40) if (r := WorldSource(SourceConfig(scenarios=["edit"])).load(i)).edit_marks
                  and any(m.colour for m in r.edit_marks.drawn))
    item = training_item(record, DataConfig(), glyphs=True, glyph_objects=True, glyph_edits=True, glyph_shapes=True,
                         glyph_move_colours=True)
    assert item["refs"][1].tobytes() == render_edit_marks(record.edit_marks, 64, 64, 64, True, True).tobytes()
    assert item["refs"][1].tobytes() != render_edit_marks(record.edit_marks, 64, 64, 64, True).tobytes()
    with pytest.raises(ValueError, match="glyph_shapes"):
        PipelineConfig(glyph_preset="nano", glyph_edits=True, glyph_move_colours=True)
    # The pipeline draws them for the DiT when its config says so.
    plain = build_tiny_pipeline()
    pipe = ThinkGenPipeline(plain.mllm, plain.transformer, plain.codec, PipelineConfig(
        **{**plain.config.__dict__, "glyph_preset": "nano", "glyph_edits": True, "glyph_shapes": True,
           "glyph_move_colours": True}))
    plan = edits.move(random.Random(0), NANO)
    image = render(plan.source, 64)
    out = pipe(plan.answer, images=[image], seed=0)
    assert out.glyphs[0].tobytes() == plan_edit_glyphs(plan.answer, image, "nano", 64, 64, "0:0", True, True).tobytes()
    assert out.glyphs[0].tobytes() != plan_edit_glyphs(plan.answer, image, "nano", 64, 64, "0:0", True).tobytes()


def test_training_items_read_edit_marks_beside_the_input():
    data = DataConfig()
    source = WorldSource(SourceConfig(scenarios=["edit", "reflection", "text"]))
    kinds = set()
    for index in range(24):
        record = source.load(index)
        item = training_item(record, data, glyphs=True, glyph_objects=True, glyph_edits=True)
        if not record.input_images:
            continue
        plain = training_item(record, data, glyphs=True, glyph_objects=True)
        if record.edit_marks:
            kinds.add("marked")
            source_image, marks = item["refs"]
            assert source_image.tobytes() == plain["refs"][0].tobytes()
            assert marks.tobytes() == render_edit_marks(record.edit_marks, 64, 64, 64).tobytes()
            assert [r.tobytes() for r in item["unmarked_refs"]] == [source_image.tobytes()]
        else:  # a reflection whose image already matches: nothing changes
            kinds.add("unchanged")
            assert len(item["refs"]) == 1 and item["unmarked_refs"] is None
    assert kinds == {"marked", "unchanged"}


def test_edit_marks_reach_the_dit_and_the_saved_config(tmp_path):
    plain = build_tiny_pipeline()
    marks = ThinkGenPipeline(plain.mllm, plain.transformer, plain.codec, PipelineConfig(
        **{**plain.config.__dict__, "glyph_preset": "nano", "glyph_edits": True}))
    plan = edits.remove(random.Random(3), NANO)
    image = render(plan.source, 64)
    out = marks(plan.answer, images=[image], seed=0)
    assert out.glyphs[0].tobytes() == plan_edit_glyphs(plan.answer, image, "nano", 64, 64, "0:0").tobytes()
    assert out.images[0].tobytes() != plain(plan.answer, images=[image], seed=0).images[0].tobytes()
    assert marks(plan.answer, images=[image], seed=0, glyphs=False).glyphs == [None]
    assert marks("rotate the star", images=[image], seed=0).glyphs == [None]  # nothing the planner can tell
    marks.save_pretrained(tmp_path / "p")
    assert ThinkGenPipeline.from_pretrained(tmp_path / "p").config.glyph_edits is True
    with pytest.raises(ValueError, match="glyph_preset"):
        PipelineConfig(glyph_edits=True)
    recipe = sft_recipe(tmp_path, extra='stage = "dit"')
    with pytest.raises(ValueError, match="glyph_preset"):
        load_recipe(recipe, ["model.glyph_edits=true"])
    with_preset = recipe.read_text().replace('mllm = "tiny"', 'mllm = "tiny"\nglyph_preset = "nano"')
    recipe.write_text(with_preset)
    assert load_recipe(recipe, ["model.glyph_edits=true", "flow.mark_dropout=0.3"]).flow.mark_dropout == 0.3
    with pytest.raises(ValueError, match="glyph_move_colours"):
        load_recipe(recipe, ["model.glyph_edits=true", "model.glyph_move_colours=true"])
