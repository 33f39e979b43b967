"""Glyph references: the planned layout is the world's own word layout, the pipeline gives the DiT (and only
the DiT) a glyph reference in text-to-image calls that quote text, the trainer gives text-to-image world
samples their target's words, and RL rollouts read the same references. Object marks: the planner counts
what the world's instructions name, places it as the world does, and the trainer marks the target's boxes."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import numpy as np
import pytest
import torch
from train_recipes import sft_recipe

from rl_support import dit_config

from thinkgen.glyphs import OBJECT_MARK_RGB, ObjectPlan, plan_glyphs, planned_objects, quoted_texts, render_glyphs
from thinkgen.pipeline import PipelineConfig, ThinkGenPipeline
from thinkgen.rl.common import PromptItem
from thinkgen.rl.dit_grpo import rollout_group
from thinkgen.sampling import flow_timesteps
from thinkgen.train.config import DataConfig, SourceConfig, load_recipe
from thinkgen.train.data import WorldSource
from thinkgen.train.logs import read_metrics
from thinkgen.train.sft import train, training_item
from thinkgen.world._components import label
from thinkgen.world.geometry import holds_clearly
from thinkgen.world.layout import compose
from thinkgen.world.render import render
from thinkgen.world.scenarios import generate
from thinkgen.world.scene import Scene, get_preset
from tiny_pipeline import build_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

QUOTING = 'the word "cat"'


def test_quoted_texts_in_order_each_once():
    assert quoted_texts('the words "cat" and "dog", then "cat" again') == ["cat", "dog"]
    assert quoted_texts("one red circle") == []
    # Quotes holding a line break or control character are no text to draw (the font cannot lay them out).
    broken = [f'"a{c}b"' for c in "\n\r\x1c\x85\u2029\x00"]
    assert quoted_texts(" ".join(broken) + ' "cat"') == ["cat"]
    assert plan_glyphs('write "a\rb"', "nano", 64, 64, 0) is None


@pytest.mark.parametrize("seed", [0, 7, 123])
def test_a_planned_glyph_is_the_world_word_layout(seed):
    """With no objects the world lays words out from the same generator draws: a planned reference is a
    layout the training data holds, not a look-alike."""
    config = get_preset("nano")
    texts = ["cat", "sun"][: config.max_words]
    instruction = "write " + " and ".join(f'"{t}"' for t in texts)
    world_words = compose(config, random.Random(seed), [], texts).words
    planned = plan_glyphs(instruction, "nano", 64, 64, seed)
    assert planned.tobytes() == render(Scene(words=world_words), config.canvas_px).tobytes()


def test_no_glyph_without_drawable_quoted_text():
    config = get_preset("nano")
    too_many = " ".join(f'"w{i}"' for i in range(config.max_words + 1))
    assert plan_glyphs("one red circle", "nano", 64, 64, 0) is None
    assert plan_glyphs(too_many, "nano", 64, 64, 0) is None
    assert plan_glyphs('"' + "w" * 40 + '"', "nano", 64, 64, 0) is None  # wider than the canvas


def test_the_pipeline_gives_the_dit_a_glyph_reference_only_where_asked():
    plain = build_tiny_pipeline()
    pipe = ThinkGenPipeline(plain.mllm, plain.transformer, plain.codec,
                            PipelineConfig(**{**plain.config.__dict__, "glyph_preset": "nano"}))
    out = pipe(QUOTING, seed=0)
    assert out.glyphs[0].size == (16, 16)
    assert out.glyphs[0].tobytes() == plan_glyphs(QUOTING, "nano", 16, 16, "0:0").tobytes()
    without = pipe(QUOTING, seed=0, glyphs=False)
    assert without.glyphs == [None]
    assert out.images[0].tobytes() != without.images[0].tobytes()  # the DiT read it
    assert out.instruction == without.instruction and out.token_counts == without.token_counts  # the MLLM did not
    assert without.images[0].tobytes() == plain(QUOTING, seed=0).images[0].tobytes()
    # Nothing quoted, an edit, or a model without a glyph preset: no reference.
    assert pipe("one red circle", seed=0).glyphs == [None]
    assert pipe(QUOTING, images=[out.images[0]], seed=0).glyphs == [None]
    assert plain(QUOTING, seed=0).glyphs == [None]


def test_the_glyph_preset_is_saved_with_the_pipeline_and_checked(tmp_path):
    plain = build_tiny_pipeline()
    config = PipelineConfig(**{**plain.config.__dict__, "glyph_preset": "nano"})
    ThinkGenPipeline(plain.mllm, plain.transformer, plain.codec, config).save_pretrained(tmp_path / "p")
    assert ThinkGenPipeline.from_pretrained(tmp_path / "p").config.glyph_preset == "nano"
    with pytest.raises(ValueError, match="allowed: .*nano"):
        PipelineConfig(glyph_preset="tiny-world")


def test_training_items_carry_their_target_words_as_a_glyph_reference():
    data = DataConfig()
    source = WorldSource(SourceConfig(scenarios=["text", "composition", "edit"]))
    seen = set()
    for index in range(12):
        record = source.load(index)
        item = training_item(record, data, glyphs=True)
        if record.input_images:  # an edit: its input images only
            kind = "edit"
            assert len(item["refs"]) == len(record.input_images)
        elif record.target_words:  # text-to-image with words: their glyphs, nothing else of the target
            kind = "glyph"
            (glyph,) = item["refs"]
            assert glyph.tobytes() == render_glyphs(record.target_words, 64, 64, 64).tobytes()
        else:
            kind = "plain"
            assert item["refs"] == []
        assert training_item(record, data)["refs"] == item["refs"][: len(record.input_images)]
        seen.add(kind)
    assert seen == {"edit", "glyph", "plain"}


def test_a_glyph_stage_exports_a_glyph_pipeline_and_checks_its_sources(tmp_path):
    recipe = sft_recipe(tmp_path, extra='stage = "dit"', sources='[[data.sources]]\nscenarios = ["text"]\n')
    recipe.write_text(recipe.read_text().replace('mllm = "tiny"', 'mllm = "tiny"\nglyph_preset = "nano"'))
    train(load_recipe(recipe, ["run.max_steps=1", "run.save_every=0"]))
    final = tmp_path / "run" / "final"
    assert ThinkGenPipeline.from_pretrained(final).config.glyph_preset == "nano"
    # A glyph fine-tune of a trained model: its pipeline folder gives the frozen MLLM, its DiT the start.
    train(load_recipe(recipe, [f'model.mllm="{final}"', f'model.transformer="{final / "transformer"}"',
                               "model.dit={}", f'run.output_dir="{tmp_path / "again"}"', "run.max_steps=1",
                               "run.save_every=0"]))
    assert ThinkGenPipeline.from_pretrained(tmp_path / "again" / "final").config.glyph_preset == "nano"
    with pytest.raises(ValueError, match="glyph_preset"):
        load_recipe(recipe, ['data.sources.0.preset="medium"'])
    with pytest.raises(ValueError, match="glyph_preset"):
        load_recipe(recipe, ['model.glyph_preset="tiny-world"'])


def test_dit_grpo_rollouts_read_the_glyph_reference(tmp_path):
    plain = build_tiny_pipeline()
    glyph = ThinkGenPipeline(plain.mllm, plain.transformer, plain.codec,
                             PipelineConfig(**{**plain.config.__dict__, "glyph_preset": "nano"}))
    config = dit_config(tmp_path)
    config = dataclasses.replace(config, grpo=dataclasses.replace(config.grpo, think=False))
    timesteps = flow_timesteps(2, 16, 16).tolist()
    item = PromptItem(prompt=QUOTING, images=[], scenario="text", spec=None)
    with_glyph = rollout_group(glyph, glyph.transformer, item, config, timesteps, noise_seed=0)
    without = rollout_group(plain, plain.transformer, item, config, timesteps, noise_seed=0)
    assert with_glyph.conditions.cond.ref_image_hidden_states is not None
    assert without.conditions.cond.ref_image_hidden_states is None
    assert not torch.equal(with_glyph.latents[0][-1], without.latents[0][-1])


# ---- object marks ------------------------------------------------------------------------------------


def _marked_boxes(image, canvas_px):
    """Centres (x, y, canvas fractions) of the grey marks' boxes, read back from the pixels, sorted (anti-aliased
    pixels of a letter can share the mark's grey, but never fill a rectangle)."""
    components = label((np.asarray(image) == OBJECT_MARK_RGB).all(axis=-1))
    return _sorted([((c0 + c1) / 2 / canvas_px, (r0 + r1) / 2 / canvas_px)
                    for (r0, c0, r1, c1), area in zip(components.boxes, components.areas)
                    if area >= 50 and area == (r1 - r0) * (c1 - c0)])


def _centres(objects):
    return _sorted([(o.x, o.y) for o in objects])


def _sorted(centres):
    """In reading order of the coarse position, so a pixel of rounding never reorders two centres."""
    return np.array(sorted(centres, key=lambda c: (round(c[1], 1), round(c[0], 1))))


@pytest.mark.parametrize("scenario", ["composition", "text", "reasoning"])
def test_the_planner_reads_every_instruction_the_world_writes_after_thinking(scenario):
    """The MLLM's instruction is the world's answer: the planner counts each of its shapes right and keeps its
    relation, so a planned layout holds what the target holds."""
    config = get_preset("nano")
    for index in range(150):
        sample = generate(scenario, index, config=config, seed=3, split="test")
        plan = planned_objects(sample.answer, config)
        target = sample.target.objects
        if not target:
            assert plan is None
            continue
        assert Counter(plan.shapes) == Counter(o.shape for o in target), sample.answer
        if plan.relation is not None:
            name, i, j = plan.relation
            by_shape = {o.shape: o for o in target}  # a relation's two shapes differ
            assert holds_clearly(name, by_shape[plan.shapes[i]].box(), by_shape[plan.shapes[j]].box())


def test_the_planner_reads_varied_phrasing_and_leaves_riddles_to_the_mllm():
    config = get_preset("nano")
    assert planned_objects("a photo of 3 stars coloured red", config) == ObjectPlan(("star",) * 3)
    assert planned_objects('a single circle that is blue and the word "star"', config) == ObjectPlan(("circle",))
    assert planned_objects("exactly two squares as well as a triangle", config) == ObjectPlan(
        ("square", "square", "triangle"))
    assert planned_objects("one red star to the left of one blue circle", config) == ObjectPlan(
        ("star", "circle"), ("left of", 0, 1))
    assert planned_objects("a circle with a star beneath it", config) == ObjectPlan(("circle", "star"),
                                                                                    ("below", 1, 0))
    for riddle in ("draw as many stars as a tricycle has wheels", "draw six minus two blue stars",
                   "one star for each leg of a horse", "some triangles", "two star", "one red hexagon",
                   "five circles"):  # nano holds at most four objects
        assert planned_objects(riddle, config) is None, riddle


@pytest.mark.parametrize("seed", [0, 7, 123])
def test_a_planned_layout_marks_the_boxes_the_world_would_place(seed):
    config = get_preset("nano")
    world = compose(config, random.Random(seed), [("star", "red"), ("star", "red"), ("circle", "blue")], ["cat"])
    planned = plan_glyphs('two red stars, one blue circle and the word "cat"', "nano", 64, 64, seed, objects=True)
    np.testing.assert_allclose(_marked_boxes(planned, 64), _centres(world.objects), atol=0.02)
    assert plan_glyphs("two red stars", "nano", 64, 64, seed) is None  # no marks unless asked
    related = plan_glyphs("one star above one circle", "nano", 64, 64, seed, objects=True)
    (_, y0), (_, y1) = sorted(_marked_boxes(related, 64), key=lambda c: c[1])
    assert y1 - y0 > 0.2  # one box clearly above the other, as "above" needs
    assert plan_glyphs("draw as many stars as a tricycle has wheels", "nano", 64, 64, seed, objects=True) is None


def test_training_items_mark_their_target_objects():
    data = DataConfig()
    source = WorldSource(SourceConfig(scenarios=["composition", "text", "edit"]))
    marked = 0
    for index in range(16):
        record = source.load(index)
        item = training_item(record, data, glyphs=True, glyph_objects=True)
        if record.input_images:
            assert len(item["refs"]) == len(record.input_images)
            continue
        (reference,) = item["refs"]
        expected = render_glyphs(record.target_words, 64, 64, 64, objects=record.target_objects)
        assert reference.tobytes() == expected.tobytes()
        if record.target_objects:
            np.testing.assert_allclose(_marked_boxes(reference, 64), _centres(record.target_objects), atol=0.02)
            # Without its marks (flow.mark_dropout): the words' glyph reference, or none.
            words = [render_glyphs(record.target_words, 64, 64, 64).tobytes()] if record.target_words else []
            assert [image.tobytes() for image in item["unmarked_refs"]] == words
            marked += 1
        else:
            assert item["unmarked_refs"] is None
    assert marked >= 4


def test_mark_dropout_trains_on_the_references_without_their_marks(tmp_path):
    """Composition samples quote no words: with every mark dropped the DiT reads no reference, as in a stage
    without object marks (same samples, noise and times), and with none dropped it reads the marks."""

    def losses(folder: str, *settings: str) -> list[float]:
        (tmp_path / folder).mkdir()
        recipe = sft_recipe(tmp_path / folder, extra='stage = "dit"',
                            sources='[[data.sources]]\nscenarios = ["composition"]\n')
        recipe.write_text(recipe.read_text().replace('mllm = "tiny"', 'mllm = "tiny"\nglyph_preset = "nano"'))
        # Three steps: the DiT's zero-initialised gates and output let the references act from the third on.
        train(load_recipe(recipe, ["run.max_steps=3", "run.save_every=0", *settings]))
        return [r["loss"] for r in read_metrics(tmp_path / folder / "run")]

    unmarked = losses("unmarked")
    assert losses("all_dropped", "model.glyph_objects=true", "flow.mark_dropout=0.999") == unmarked
    assert losses("marked", "model.glyph_objects=true") != unmarked
    with pytest.raises(ValueError, match="mark_dropout must be in"):
        load_recipe(sft_recipe(tmp_path, name="bad.toml"), ["flow.mark_dropout=1.0"])
    with pytest.raises(ValueError, match="set model.glyph_objects"):
        load_recipe(sft_recipe(tmp_path, name="bad.toml"), ["flow.mark_dropout=0.5"])


def test_object_marks_reach_the_dit_and_the_saved_config(tmp_path):
    plain = build_tiny_pipeline()
    marks = ThinkGenPipeline(plain.mllm, plain.transformer, plain.codec, PipelineConfig(
        **{**plain.config.__dict__, "glyph_preset": "nano", "glyph_objects": True}))
    out = marks("two red stars", seed=0)
    assert out.glyphs[0].tobytes() == plan_glyphs("two red stars", "nano", 16, 16, "0:0", objects=True).tobytes()
    assert out.images[0].tobytes() != plain("two red stars", seed=0).images[0].tobytes()
    marks.save_pretrained(tmp_path / "p")
    assert ThinkGenPipeline.from_pretrained(tmp_path / "p").config.glyph_objects is True
    with pytest.raises(ValueError, match="glyph_preset"):
        PipelineConfig(glyph_objects=True)
    recipe = sft_recipe(tmp_path, extra='stage = "dit"')
    with pytest.raises(ValueError, match="glyph_preset"):
        load_recipe(recipe, ["model.glyph_objects=true"])
