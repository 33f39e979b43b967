"""The nano MLLM stage: a tiny Qwen3-VL learns to think, write instructions, see images and judge them.

The model is ``Qwen3VLForConditionalGeneration`` (the class of the full model) built small by
:mod:`thinkgen.models.tiny`, with a byte-level BPE tokenizer trained on the world's own texts, and trained
from scratch with a causal-LM loss on the assistant turn only. Each sample is the inference template of
think mode (:func:`~thinkgen.models.mllm.build_prompt`, ``think=True``: system, user turn with one
``<|vision_start|><|image_pad|><|vision_end|>`` per input image, assistant prefilled with ``<think>\\n``)
followed by the target the model must generate::

    {reasoning}\\n</think>{answer}<|im_end|>        (or  </think>{answer}<|im_end|>  without reasoning)

No whitespace follows ``</think>``: the no-think template (the DiT's pseudo-CoT training template) puts
the caption right after ``</think>`` too, so the span the DiT reads has one form in both modes. The
prompt, prefill included, is masked out of the loss. Edit, reasoning-edit and reflection samples carry
their input images (``pixel_values`` / ``image_grid_thw`` from the processor); reflection samples teach
the model to say whether an image matches its prompt ("The image already matches the prompt.") or how to
fix it.

Commands:

    thinkgen train --recipe recipes/nano/mllm.toml                       # CPU
    torchrun --nproc_per_node 2 -m thinkgen.cli train --recipe recipes/nano/mllm.toml

The result, ``final/mllm``, loads with ``ThinkGenMLLM.from_pretrained``. A stage that continues the MLLM of a
pipeline (``model.init`` a pipeline folder or a shipped model) makes ``final/`` that pipeline with the trained
MLLM in place of its own, so the next stage (an RL recipe's ``model.pipeline``) starts from it.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from transformers import Qwen3VLForConditionalGeneration

from thinkgen.models.mllm import (
    CHAT_TOKENS,
    SYSTEM_PROMPT,
    Qwen3VLImageProcessor,
    ThinkGenMLLM,
    build_prompt,
    thought_text,
)
from thinkgen.models.tiny import (
    DEFAULT_CORPUS,
    TinyQwen3VLSpec,
    build_tiny_processor,
    build_tiny_qwen3vl,
    build_tiny_tokenizer,
)
from thinkgen.pipeline import MODEL_INDEX, is_pipeline, mllm_folders, resolve_model_path
from thinkgen.train import run as R
from thinkgen.train.checkpoint import RNGState, ValueState
from thinkgen.train.config import MLLMSFTConfig
from thinkgen.train.data import Record, SampleError, Source, build_sources
from thinkgen.train.distributed import OptimizerState, TrainableWeights, build_accelerator, wrap_model
from thinkgen.train.logs import MetricsLogger
from thinkgen.train.optim import build_scheduler

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # labels the loss skips (transformers' convention)
PROCESSOR_DIR = "processor"


@dataclass
class MLLMSFTResult:
    """What :func:`train` returns: last step, the mean loss of each step run, the trained MLLM (main process)."""

    step: int
    losses: list[float] = field(default_factory=list)
    mllm: ThinkGenMLLM | None = None


def assistant_target(reasoning: str, answer: str) -> str:
    """The text the model generates after the ``<think>\\n`` prefill (see the module docstring)."""
    return thought_text(reasoning, answer) + CHAT_TOKENS.im_end


def tokenizer_corpus(sources: list[Source], num_samples: int) -> list[str]:
    """Texts the tokenizer is trained on: the default corpus, the system prompt and the sources' texts."""
    texts = [*DEFAULT_CORPUS, SYSTEM_PROMPT]
    for source in sources:
        for index in range(num_samples // len(sources)):
            texts.extend(source.texts(index))
    return texts


def build_processor(
    config: MLLMSFTConfig, sources: list[Source], output_dir: Path, accelerator: Any
) -> Qwen3VLImageProcessor:
    """The run's processor: built once (tokenizer trained on the data) and saved, then always read back,
    so a resumed run tokenizes exactly as the first."""
    folder = output_dir / PROCESSOR_DIR
    if config.model.init:
        return Qwen3VLImageProcessor.from_pretrained(mllm_folders(config.model.init)[1])
    if accelerator.is_main_process and not folder.is_dir():
        spec = tiny_spec(config)
        tokenizer = build_tiny_tokenizer(tokenizer_corpus(sources, config.model.num_corpus_samples), spec.vocab_size)
        build_tiny_processor(tokenizer, spec).save_pretrained(folder)
    accelerator.wait_for_everyone()
    return Qwen3VLImageProcessor.from_pretrained(folder)


def complete_pipeline(pipeline: Path, final: Path) -> None:
    """Make ``final``, which holds the trained ``mllm``, a pipeline folder: the other parts of ``pipeline`` (DiT,
    codec, scheduler, processor) and its ``model_index.json`` copied unchanged beside it. Nothing else is
    copied: a model card describes the model it came with, not this one."""
    for part in sorted(p for p in pipeline.iterdir() if p.is_dir() and p.name != "mllm"):
        shutil.rmtree(final / part.name, ignore_errors=True)
        shutil.copytree(part, final / part.name)
    shutil.copy2(pipeline / MODEL_INDEX, final / MODEL_INDEX)


def tiny_spec(config: MLLMSFTConfig) -> TinyQwen3VLSpec:
    """The recipe's ``[model] tiny`` table as a :class:`TinyQwen3VLSpec`."""
    try:
        return TinyQwen3VLSpec(**config.model.tiny)
    except TypeError as err:
        raise ValueError(f"model.tiny: {err}") from None


def encode_sample(
    processor: Qwen3VLImageProcessor, record: Record, system_prompt: str | None, max_seq_len: int
) -> dict[str, torch.Tensor]:
    """Token ids, labels and image tensors of one sample.

    The target is tokenized on its own and appended to the prompt's ids: generation starts at the end of
    the prompt, so these are the token boundaries the model will produce at inference.
    """
    prompt = build_prompt(record.instruction, len(record.input_images), think=True, system_prompt=system_prompt)
    inputs = processor(text=[prompt], images=record.input_images or None, return_tensors="pt")
    target_ids = processor.tokenizer(
        assistant_target(record.reasoning, record.answer), add_special_tokens=False, return_tensors="pt"
    ).input_ids[0]
    prompt_ids = inputs["input_ids"][0]
    length = prompt_ids.shape[0] + target_ids.shape[0]
    if length > max_seq_len:
        raise SampleError(f"{length} tokens, more than train.max_seq_len = {max_seq_len}")
    item = {
        "input_ids": torch.cat([prompt_ids, target_ids]),
        "labels": torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), target_ids]),
        "mm_token_type_ids": F.pad(inputs["mm_token_type_ids"][0], (0, target_ids.shape[0])),
    }
    if record.input_images:
        item["pixel_values"] = inputs["pixel_values"]  # (patches, C·t·p·p)
        item["image_grid_thw"] = inputs["image_grid_thw"]  # (images, 3)
    return item


def loader_item(item: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """``item`` as numpy arrays, the form a loader worker hands over: a torch tensor would cross to the main
    process as a shared-memory handle of its own, an array travels inside the pickle
    (``benchmarks/mllm_sft_input_pipeline.py``)."""
    return {key: value.numpy() for key, value in item.items()}


def collate_tokens(
    items: list[dict[str, torch.Tensor | np.ndarray]], pad_token_id: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; images of all rows are concatenated in row order, as the model expects."""
    items = [{key: torch.as_tensor(value) for key, value in item.items()} for item in items]
    length = max(item["input_ids"].shape[0] for item in items)

    def pad(key: str, value: int) -> torch.Tensor:
        return torch.stack([F.pad(item[key], (0, length - item[key].shape[0]), value=value) for item in items])

    batch = {
        "input_ids": pad("input_ids", pad_token_id),  # (B, T)
        "labels": pad("labels", IGNORE_INDEX),  # (B, T)
        "mm_token_type_ids": pad("mm_token_type_ids", 0),  # (B, T)
        "attention_mask": torch.stack(
            [(torch.arange(length) < item["input_ids"].shape[0]).long() for item in items]
        ),  # (B, T)
    }
    with_images = [item for item in items if "pixel_values" in item]
    if with_images:
        batch["pixel_values"] = torch.cat([item["pixel_values"] for item in with_images])
        batch["image_grid_thw"] = torch.cat([item["image_grid_thw"] for item in with_images])
    return {key: value.to(device) for key, value in batch.items()}


def count_targets(items: list[dict[str, torch.Tensor | np.ndarray]]) -> int:
    """The tokens the loss predicts in these items (a label's first token is never predicted)."""
    return sum(int((np.asarray(item["labels"])[1:] != IGNORE_INDEX).sum()) for item in items)


def train(config: MLLMSFTConfig) -> MLLMSFTResult:
    """Run (or resume) the MLLM stage. See the module docstring for the commands.

    Example:
        >>> from thinkgen.train.config import load_recipe
        >>> result = train(load_recipe("recipes/nano/mllm.toml", ["run.max_steps=20"]))
    """
    # ---- compute init
    output_dir = Path(config.run.output_dir)
    accelerator = build_accelerator(
        config.distributed.strategy, config.train.mixed_precision, config.data.global_batch_size,
        config.data.micro_batch_size, Qwen3VLForConditionalGeneration._no_split_modules,
        # The vision tower has no gradient on a batch without images.
        find_unused_parameters=True,
    )
    R.log_on_main_only(accelerator)
    set_seed(config.run.seed)

    # ---- data validation pass, tokenizer
    sources = build_sources(config.data, config.run.seed, required=("instruction", "answer"))
    R.write_config(output_dir, config, accelerator.is_main_process)
    processor = build_processor(config, sources, output_dir, accelerator)

    # ---- model
    if config.model.init:
        # float32 master weights, whatever the folder stores (the shipped MLLM is half precision)
        qwen = ThinkGenMLLM.from_pretrained(*mllm_folders(config.model.init), torch_dtype=torch.float32).model
    else:
        qwen = build_tiny_qwen3vl(processor.tokenizer, tiny_spec(config), seed=config.run.seed)
    qwen.requires_grad_(True).train()
    logger.info("MLLM: %.3fM parameters", sum(p.numel() for p in qwen.parameters()) / 1e6)
    model, optimizer = wrap_model(accelerator, qwen, config.train.gradient_checkpointing, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, config.run.max_steps)

    # ---- data
    system_prompt = SYSTEM_PROMPT if config.model.use_system_prompt else None
    pad_token_id = processor.tokenizer.pad_token_id

    def to_item(record: Record) -> dict[str, Any]:
        return loader_item(encode_sample(processor, record, system_prompt, config.train.max_seq_len))

    planner, start_batches = R.make_batches(
        accelerator, config.data, sources, config.run.seed, lambda source, index: "all", to_item, False
    )

    # ---- checkpoints
    train_state = ValueState(step=0, samples=0, broken=0)
    data_state = ValueState(**planner.state_dict())
    shared = {"model": TrainableWeights(model), "optimizer": OptimizerState(model, optimizer),
              "scheduler": scheduler, "data": data_state, "train_state": train_state}
    per_process = {"rng": RNGState()}
    manager = R.checkpoint_manager(accelerator, config.run)
    step = R.resume(config.run, manager, shared, per_process)
    planner.load_state_dict(data_state.state_dict())
    batches, sampler = start_batches()
    metrics = MetricsLogger(output_dir, accelerator.is_main_process, config.run.use_tensorboard, step)
    progress = R.LoopProgress(step, config.run.max_steps, accelerator.is_main_process)

    # ---- the loop
    budget = R.TimeBudget(config.run.max_minutes)
    while step < config.run.max_steps:
        totals = R.accumulate_step(
            accelerator, model, batches, sampler.num_micro_steps,
            lambda items, normaliser: model(**collate_tokens(items, pad_token_id, accelerator.device),
                                            num_items_in_batch=normaliser).loss,
            budget, targets_of=count_targets,
        )
        grad_norm = R.optimizer_step(accelerator, model, optimizer, scheduler, config.optim.max_grad_norm)
        step += 1

        data_state.load_state_dict(sampler.states.popleft())
        state = train_state.state_dict()
        train_state.load_state_dict({"step": step, "samples": state["samples"] + totals.samples,
                                     "broken": state["broken"] + totals.broken})
        progress.advance(totals.mean_loss, totals.samples)

        last = step == config.run.max_steps or totals.out_of_time
        if step % config.run.log_every == 0 or last:
            metrics.log(step, {
                "loss": totals.mean_loss, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                "samples_per_s": progress.samples_per_s(), "samples": train_state.values["samples"],
                "skipped": train_state.values["broken"] + int(data_state.values["num_skipped"]),
            })
        if config.run.save_every and step % config.run.save_every == 0 or last:
            manager.save(step, shared, per_process)
        if totals.out_of_time:
            budget.report(step, config.run.max_steps)
            break

    # ---- cleanup: the trained MLLM in the ThinkGenMLLM layout
    progress.close()
    metrics.close()
    mllm = None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(model).eval()
        mllm = ThinkGenMLLM(trained, processor, system_prompt=system_prompt)
        mllm.save_pretrained(output_dir / "final" / "mllm")
        logger.info("wrote %s", output_dir / "final" / "mllm")
        if config.model.init and is_pipeline(config.model.init):
            complete_pipeline(resolve_model_path(config.model.init), output_dir / "final")
            logger.info("wrote %s: the pipeline of %s with this MLLM", output_dir / "final", config.model.init)
    return MLLMSFTResult(step=step, losses=progress.losses, mllm=mllm)
