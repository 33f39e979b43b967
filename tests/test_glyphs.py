"""Glyph references: the planned layout is the world's own word layout, the pipeline gives the DiT (and only
the DiT) a glyph reference in text-to-image calls that quote text, the trainer gives text-to-image world
samples their target's words, and RL rollouts read the same references."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from train_recipes import sft_recipe

from rl_support import dit_config
from thinkgen.glyphs import plan_glyphs, quoted_texts, render_glyphs
from thinkgen.pipeline import PipelineConfig, ThinkGenPipeline
from thinkgen.rl.common import PromptItem
from thinkgen.rl.dit_grpo import rollout_group
from thinkgen.sampling import flow_timesteps
from thinkgen.train.config import DataConfig, SourceConfig, load_recipe
from thinkgen.train.data import WorldSource
from thinkgen.train.sft import train, training_item
from thinkgen.world.layout import compose
from thinkgen.world.render import render
from thinkgen.world.scene import Scene, get_preset
from tiny_pipeline import build_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

QUOTING = 'the word "cat"'


def test_quoted_texts_in_order_each_once():
    assert quoted_texts('the words "cat" and "dog", then "cat" again') == ["cat", "dog"]
    assert quoted_texts("one red circle") == []


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
