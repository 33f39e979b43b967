"""The nano MLLM stage: think-template targets with the prompt masked, images, training, export, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_pipeline import build_tiny_pipeline

from thinkgen.models.mllm import ThinkGenMLLM
from thinkgen.models.tiny import build_tiny_mllm
from thinkgen.pipeline import ThinkGenPipeline
from thinkgen.train.config import SourceConfig, load_recipe
from thinkgen.train.data import WorldSource
from thinkgen.train.mllm_sft import (
    IGNORE_INDEX,
    assistant_target,
    collate_tokens,
    encode_sample,
    loader_item,
    train,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_target_follows_the_think_template():
    assert assistant_target("Bananas are yellow. ", "one yellow star") == (
        "Bananas are yellow.\n</think>one yellow star<|im_end|>"
    )
    # Without reasoning the target has the no-think shape: the caption right after </think>.
    assert assistant_target("", "two red circles") == "</think>two red circles<|im_end|>"


def test_encoded_sample_masks_the_prompt_and_carries_images():
    processor = build_tiny_mllm().processor
    record = WorldSource(SourceConfig(scenarios=["reflection"])).load(1, with_output=False)
    item = encode_sample(processor, record, system_prompt=None, max_seq_len=1024)
    learned = item["labels"] != IGNORE_INDEX
    # The loss covers exactly the target, which follows the "<think>\n" prefill.
    text = processor.tokenizer.decode(item["input_ids"][learned])
    assert text == assistant_target(record.reasoning, record.answer)
    assert processor.tokenizer.decode(item["input_ids"][~learned]).endswith("<|im_start|>assistant\n<think>\n")
    num_image_tokens = int((item["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert num_image_tokens == int(item["image_grid_thw"].prod(dim=1).sum()) // processor.image_processor.merge_size**2
    batch = collate_tokens([item, item], processor.tokenizer.pad_token_id, torch.device("cpu"))
    assert batch["pixel_values"].shape[0] == 2 * item["pixel_values"].shape[0]
    # What a loader worker hands over (numpy arrays) collates to the same batch.
    handed_over = loader_item(item)
    assert all(isinstance(value, np.ndarray) for value in handed_over.values())
    same = collate_tokens([handed_over, handed_over], processor.tokenizer.pad_token_id, torch.device("cpu"))
    assert same.keys() == batch.keys() and all(torch.equal(same[k], batch[k]) for k in batch)


def _tiny_recipe(tmp_path, micro_batch_size: int, extra_run: str = ""):
    """A tiny MLLM-stage recipe: 3 steps of 4 samples, a 384-token tokenizer."""
    recipe = tmp_path / "mllm.toml"
    recipe.write_text(f"""trainer = "mllm_sft"
[run]
output_dir = "{tmp_path / 'run'}"
max_steps = 3
use_tensorboard = false
{extra_run}
[model]
num_corpus_samples = 60
tiny = {{ vocab_size = 384 }}
[data]
global_batch_size = 4
micro_batch_size = {micro_batch_size}
[[data.sources]]
scenarios = ["reasoning", "reflection"]
[optim]
lr = 3e-3
""")
    return recipe


def test_mllm_stage_trains_resumes_exactly_and_exports(tmp_path):
    recipe = _tiny_recipe(tmp_path, 2, "log_every = 1\nsave_every = 2")
    reference = train(load_recipe(recipe)).losses
    first = train(load_recipe(recipe, ["run.max_steps=2", f"run.output_dir='{tmp_path / 'split'}'"]))
    rest = train(load_recipe(recipe, [f"run.output_dir='{tmp_path / 'split'}'"]))
    assert first.losses + rest.losses == reference
    mllm = ThinkGenMLLM.from_pretrained(tmp_path / "run" / "final" / "mllm")
    out = mllm.encode_prompt("one red circle", think=False)
    assert out.instruction_states.shape[-1] == 2 * mllm.hidden_size
    # The tokenizer learned the world's words: a frequent world word (after a space) is one token.
    assert len(mllm.tokenizer(" triangles", add_special_tokens=False).input_ids) == 1


def test_the_step_loss_is_the_mean_over_its_tokens_however_the_batch_is_split(tmp_path):
    """Micro-batches of unequal token counts: accumulating 2 × 2 samples trains and logs as 1 × 4 does."""
    recipe = _tiny_recipe(tmp_path, 4, "save_every = 0")
    whole = train(load_recipe(recipe))
    split = train(load_recipe(recipe, ["data.micro_batch_size=2", f"run.output_dir='{tmp_path / 'split'}'"]))
    assert split.losses == pytest.approx(whole.losses, rel=1e-5)


def test_mllm_stage_continues_from_a_pipeline_folder_in_float32(tmp_path):
    """``model.init`` takes a pipeline folder, as the shipped model is laid out (its MLLM in half precision,
    the processor beside it): the stage starts from that MLLM and its tokenizer, with float32 master weights,
    and its ``final/`` is that pipeline with the trained MLLM, ready for the next stage."""
    pipeline = build_tiny_pipeline()
    pipeline.save_pretrained(tmp_path / "pipe", dtype=torch.float16)
    recipe = _tiny_recipe(tmp_path, 4, "save_every = 0")
    recipe.write_text(recipe.read_text().replace("tiny = { vocab_size = 384 }", f"init = \"{tmp_path / 'pipe'}\""))
    result = train(load_recipe(recipe, ["optim.lr=1e-12"]))  # an update too small to see: the start is kept
    start = pipeline.mllm.model.state_dict()
    trained = result.mllm.model.state_dict()
    assert trained.keys() == start.keys()
    for name, value in trained.items():
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value, start[name].half().float(), rtol=0, atol=1e-6)
    assert result.mllm.tokenizer.get_vocab() == pipeline.mllm.tokenizer.get_vocab()
    assert all(np.isfinite(result.losses))
    continued = ThinkGenPipeline.from_pretrained(tmp_path / "run" / "final")
    for name, value in continued.mllm.model.state_dict().items():
        torch.testing.assert_close(value, trained[name], rtol=0, atol=0)
    saved_dit = ThinkGenPipeline.from_pretrained(tmp_path / "pipe").transformer.state_dict()
    assert all(torch.equal(value, saved_dit[name]) for name, value in continued.transformer.state_dict().items())
