"""Helpers shared by the nano benchmarks: world presets and image batches, the judge, a time-based LR
schedule, the held-out flow loss. The codec's palette, data stream and checks live in
:mod:`thinkgen.train.codec`."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from thinkgen.imageio import pil_to_tensor
from thinkgen.pipeline import ThinkGenPipeline
from thinkgen.world.dataset import to_tensor
from thinkgen.world.detect import DetectorConfig, WorldDetector
from thinkgen.world.scenarios import generate
from thinkgen.world.scene import Spec, WorldConfig, get_preset
from thinkgen.world.score import score_spec


def preset_config(name: str) -> WorldConfig:
    """A world preset by name; ``nano-nowords`` is ``nano`` without words (a composition-only world)."""
    if name == "nano-nowords":
        return get_preset("nano").replace(use_words=False)
    return get_preset(name)


def to_model_range(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images → (B, 3, H, W) in [-1, 1]."""
    return torch.stack([to_tensor(i) for i in images]) * 2 - 1


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] → PIL images."""
    array = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]


def world_detector(config: WorldConfig) -> WorldDetector:
    """The judge's detector with the thresholds of ``config``'s world."""
    return WorldDetector(DetectorConfig.for_world(config))


def judge(detector: WorldDetector, image: Image.Image, spec: Spec) -> tuple[bool, float]:
    """(spec satisfied exactly, word accuracy) of one generated image by the world's judge; word
    accuracy is 1.0 when the spec asks for no words."""
    result = score_spec(image, spec, detector)
    return result.correct, result.text.word_accuracy if result.text is not None else 1.0


def core_seconds(threads: int) -> float:
    """CPU seconds this process has used, divided by its thread count: the wall time the work would take
    on ``threads`` idle cores. Used as the training clock because the machine is shared and wall time
    measures other people's load as much as ours."""
    return time.process_time() / threads


def cosine_lr(base: float, fraction: float, warmup: float = 0.02, floor: float = 0.05) -> float:
    """Learning rate at ``fraction`` of the run's time budget: linear warm-up, cosine to ``floor·base``."""
    if fraction < warmup:
        return base * max(fraction, 1e-3) / warmup
    progress = min(1.0, (fraction - warmup) / (1 - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


VAL_TIMES = torch.linspace(0.1, 0.9, 9)
VAL_SCENARIOS = ("composition", "text", "reasoning", "edit")


@torch.no_grad()
def val_flow_loss(pipeline: ThinkGenPipeline, samples_per_scenario: int) -> float:
    """The DiT's flow-matching loss on the world's val split: velocity MSE, conditioned on the answer's
    no-think states (edits on their input images), at the fixed times :data:`VAL_TIMES` with fixed noise
    per sample, so two models are compared on the same inputs."""
    losses = []
    for scenario in VAL_SCENARIOS:
        for i in range(samples_per_scenario):
            sample = generate(scenario, i, split="val")
            images = sample.input_images()
            out = pipeline.mllm.encode_prompt([sample.answer], [images], think=False)
            x1 = pipeline.codec.encode(pil_to_tensor([sample.target_image()]).to(pipeline.device)).float()
            x0 = torch.randn(x1.shape, generator=torch.Generator().manual_seed(i))
            t = VAL_TIMES[:, None, None, None]
            count = len(VAL_TIMES)
            refs = pipeline.encode_references([images])[0]
            velocity = pipeline.transformer(
                hidden_states=t * x1 + (1 - t) * x0, timestep=VAL_TIMES,
                text_hidden_states=out.instruction_states.expand(count, -1, -1),
                text_attention_mask=out.instruction_mask.expand(count, -1),
                ref_image_hidden_states=[refs] * count if refs else None,
            ).sample
            losses.append(F.mse_loss(velocity.float(), (x1 - x0).expand(count, -1, -1, -1)).item())
    return sum(losses) / len(losses)
