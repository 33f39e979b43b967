"""Helpers shared by the nano benchmarks: world presets and image batches, the judge, a time-based LR
schedule, the held-out flow loss. The codec's palette, data stream and checks live in
:mod:`thinkgen.train.codec`."""

from __future__ import annotations

import math
import random
import re
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
from thinkgen.world.sample import WorldSample
from thinkgen.world.scenarios import generate
from thinkgen.world.scene import Spec, WorldConfig, get_preset
from thinkgen.world.score import score_spec
from thinkgen.world.vocab import words_for


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
def sample_flow_loss(
    pipeline: ThinkGenPipeline, sample: WorldSample, noise_seed: int, answer: str | None = None
) -> float:
    """The DiT's flow-matching loss on one world sample: velocity MSE at the fixed times :data:`VAL_TIMES`
    with noise from ``noise_seed``, conditioned on the no-think states of ``answer`` (default: the sample's
    own), edits on their input images."""
    images = sample.input_images()
    out = pipeline.mllm.encode_prompt([sample.answer if answer is None else answer], [images], think=False)
    x1 = pipeline.codec.encode(pil_to_tensor([sample.target_image()]).to(pipeline.device)).float()
    x0 = torch.randn(x1.shape, generator=torch.Generator().manual_seed(noise_seed))
    t = VAL_TIMES[:, None, None, None]
    count = len(VAL_TIMES)
    refs = pipeline.encode_references([images])[0]
    velocity = pipeline.transformer(
        hidden_states=t * x1 + (1 - t) * x0, timestep=VAL_TIMES,
        text_hidden_states=out.instruction_states.expand(count, -1, -1),
        text_attention_mask=out.instruction_mask.expand(count, -1),
        ref_image_hidden_states=[refs] * count if refs else None,
    ).sample
    return F.mse_loss(velocity.float(), (x1 - x0).expand(count, -1, -1, -1)).item()


def val_flow_loss(pipeline: ThinkGenPipeline, samples_per_scenario: int) -> float:
    """The DiT's flow-matching loss on the world's val split (:func:`sample_flow_loss` of the first
    ``samples_per_scenario`` samples of each of :data:`VAL_SCENARIOS`), so two models are compared on the
    same inputs."""
    losses = [sample_flow_loss(pipeline, generate(scenario, i, split="val"), i)
              for scenario in VAL_SCENARIOS for i in range(samples_per_scenario)]
    return sum(losses) / len(losses)


def _swap_one(answer: str, pattern: str, choices: Sequence[str], rng: random.Random) -> str | None:
    """``answer`` with the first match of ``pattern`` (group 1) replaced by a choice the answer does not use."""
    match = re.search(pattern, answer)
    if match is None:
        return None
    unused = [c for c in choices if not re.search(rf"\b{c}", answer)]
    return answer[: match.start(1)] + rng.choice(unused) + answer[match.end(1):] if unused else None


def swapped_answer(kind: str, answer: str, world: WorldConfig, rng: random.Random) -> str | None:
    """``answer`` with one word of ``kind`` (a key of :data:`SWAP_KINDS`) swapped for another of its kind,
    drawn with ``rng``; ``None`` when the answer has no such word."""
    if kind == "word":
        match = re.search(r'"([a-z]+)"', answer)
        if match is None:
            return None
        same_length = [w for w in words_for(world) if len(w) == len(match.group(1)) and w != match.group(1)]
        return answer[: match.start(1)] + rng.choice(same_length) + answer[match.end(1):]
    if kind == "colour":
        return _swap_one(answer, rf"\b({'|'.join(world.colours)})\b", world.colours, rng)
    if kind == "shape":
        return _swap_one(answer, rf"\b({'|'.join(world.shapes)})s?\b", world.shapes, rng)
    if kind == "relation":
        relations = ("to the left of", "to the right of", "above", "below")
        return _swap_one(answer, rf"({'|'.join(relations)})", relations, rng)
    plural_counts = ("two", "three", "four")  # kind == "count": a plural count for another, the noun unchanged
    return _swap_one(answer, rf"\b({'|'.join(plural_counts)})\b", plural_counts, rng)


SWAP_KINDS = {
    "word": "text", "colour": "composition", "shape": "composition", "count": "composition",
    "relation": "composition",
}


def swap_sensitivity(pipeline: ThinkGenPipeline, samples_per_kind: int, seed: int = 0) -> dict[str, float]:
    """Does the DiT read each kind of content word? For each kind of :data:`SWAP_KINDS`, the ratio of the
    flow loss (:func:`sample_flow_loss`, val split) with one such word of the instruction swapped for another
    of its kind (a quoted word for one of the same length, a colour, a shape, a plural count, a spatial
    relation) to the loss
    with the true instruction, over the first ``samples_per_kind`` val samples that have such a word. The
    image is the true instruction's, so a DiT that reads the word does worse with the swap; 1.0 means the
    DiT ignores that kind of word."""
    world = get_preset("nano")
    rng = random.Random(seed)
    ratios = {}
    for kind, scenario in SWAP_KINDS.items():
        own = swapped = 0.0
        found = index = 0
        while found < samples_per_kind:
            sample = generate(scenario, index, split="val")
            other = swapped_answer(kind, sample.answer, world, rng)
            if other is not None:
                own += sample_flow_loss(pipeline, sample, index)
                swapped += sample_flow_loss(pipeline, sample, index, answer=other)
                found += 1
            index += 1
        ratios[kind] = swapped / own
    return ratios
