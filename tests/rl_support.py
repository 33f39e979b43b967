"""Toy rewards with a learnable signal and tiny configs for the RL tests.

The rewards are found by dotted path (``rl_support.brightness``), as recipes find any custom reward.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from thinkgen.rl.config import (
    DiTGRPOConfig,
    DiTGRPOParams,
    MLLMGRPOConfig,
    MLLMGRPOParams,
    PromptConfig,
    RolloutSampleConfig,
)
from thinkgen.train.config import OptimConfig, RunConfig


# A word the tiny random MLLM writes now and then at a low sampling temperature: a reward on it has a
# base rate to learn from.
TARGET_WORD = "where"


def instruction_has_target(prompts: Sequence[str], images: Sequence[Image.Image], *, instructions: Sequence[str],
                           **columns: Any) -> list[float]:
    """1 if the instruction contains :data:`TARGET_WORD`, else 0."""
    return [float(TARGET_WORD in text) for text in instructions]


def brightness(prompts: Sequence[str], images: Sequence[Image.Image], **columns: Any) -> list[float]:
    """Mean brightness of the image in [0, 1]."""
    return [float(np.asarray(image.convert("L"), dtype=np.float32).mean() / 255.0) for image in images]


def darkness(prompts: Sequence[str], images: Sequence[Image.Image], **columns: Any) -> list[float]:
    """1 − :func:`brightness`."""
    return [1.0 - b for b in brightness(prompts, images)]


def _run(output_dir: Path, max_steps: int, **overrides: Any) -> RunConfig:
    return RunConfig(output_dir=str(output_dir), max_steps=max_steps, log_every=1, save_every=1,
                     use_tensorboard=False, **overrides)


def mllm_config(output_dir: Path, max_steps: int = 1, reward: str = "rl_support.instruction_has_target",
                **grpo: Any) -> MLLMGRPOConfig:
    """MLLM-GRPO on the tiny pipeline: 2 composition prompts × 8 rollouts, no thought, 4-token instructions,
    2-step 16 px renders; ``grpo`` overrides :class:`MLLMGRPOParams` fields."""
    params = {"num_generations": 8, "temperature": 0.05, "max_thinking_tokens": 0, "max_instruction_tokens": 4,
              "micro_batch_size": 8, **grpo}
    return MLLMGRPOConfig(
        run=_run(output_dir, max_steps),
        prompts=PromptConfig(scenarios={"composition": 1.0}, prompts_per_step=2),
        rewards={"default": {reward: 1.0}},
        sample=RolloutSampleConfig(image_size=16, num_inference_steps=2, guidance_scale=2.0),
        grpo=MLLMGRPOParams(**params),
        optim=OptimConfig(lr=1e-3),
    )


def dit_config(
    output_dir: Path, max_steps: int = 1, reward: str = "rl_support.brightness", scenario: str = "composition",
    **grpo: Any,
) -> DiTGRPOConfig:
    """DiT-GRPO on the tiny pipeline: 2 prompts of ``scenario`` × 4 rollouts of 4 SDE steps at 16 px, CFG 2,
    2 trained steps; ``grpo`` overrides :class:`DiTGRPOParams` fields. (Edits carry 64 px input images:
    16× the tokens of a 16 px output, so the slower tests stay with composition.)"""
    params = {"num_generations": 4, "micro_batch_size": 4, "timestep_fraction": 0.5, **grpo}
    return DiTGRPOConfig(
        run=_run(output_dir, max_steps),
        prompts=PromptConfig(scenarios={scenario: 1.0}, prompts_per_step=2),
        rewards={"default": {reward: 1.0}},
        sample=RolloutSampleConfig(image_size=16, num_inference_steps=4, guidance_scale=2.0),
        grpo=DiTGRPOParams(**params),
        optim=OptimConfig(lr=1e-2),
    )


def with_run(config: Any, **run: Any) -> Any:
    """``config`` with ``[run]`` fields replaced."""
    return dataclasses.replace(config, run=dataclasses.replace(config.run, **run))


# Names of the threads that ran `thread_name` (the reward pool's tests read it).
SCORING_THREADS: list[str] = []


def thread_name(prompts: Sequence[str], images: Sequence[Any], **_: Any) -> list[float]:
    """A reward that records which thread scored it and blocks briefly, so concurrent batches overlap."""
    import threading
    import time

    SCORING_THREADS.append(threading.current_thread().name)
    time.sleep(0.05)
    return [float(len(p)) for p in prompts]
