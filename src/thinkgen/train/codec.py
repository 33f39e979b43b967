"""The nano codec stage: the palette autoencoder learns to carry world images through small latents.

The model is :class:`~thinkgen.models.nano_autoencoder.NanoAutoencoder`, whose decoder classifies every
pixel into the background or one of the world's colours. It trains on every image of a world sample
stream (the target, then the edit inputs, of ``data.scenarios``, train split), made on the fly in stream
order; the stream position is part of the checkpoint, so a resumed run sees the images the first would
have. The loss is per-pixel cross-entropy with ink pixels weighted by ``train.ink_weight``, on latents
jittered by Gaussian noise of std ``train.latent_noise`` so that the decoder tolerates a DiT's small
errors. The noise of step ``s`` is drawn from a generator seeded by (``run.seed``, ``s``), not from a
running RNG.

Checks, on scenes never trained on (the val split every ``train.eval_every`` steps and at the end, the
test split once at the end), by :func:`round_trip_check`:

* pixel-exact: every decoded pixel has the class of the original anti-aliased pixel (strict: edge
  pixels near half coverage are ambiguous), with the mean number of wrong pixels per image;
* judge-exact: the world's detector reads the same objects (shape, colour, centre) and words from the
  decoded image as from the original (:func:`same_detection`).

At the last step the latent normalisation is measured on the first ``data.stats_images`` train images
and the test check is logged (``test_*`` in ``metrics.jsonl``); then ``final/`` is written, a folder
that :func:`thinkgen.models.vae.load_codec` loads and the DiT recipes name as ``model.codec``.

One process (the codec is small), on the GPU when there is one. Command:

    thinkgen train --recipe recipes/nano/codec.toml
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from PIL import Image

from thinkgen.imageio import pil_to_tensor, tensor_to_pil
from thinkgen.models.nano_autoencoder import NanoAutoencoder
from thinkgen.train import run as R
from thinkgen.train.checkpoint import CheckpointManager, RNGState, ValueState
from thinkgen.train.config import CodecConfig
from thinkgen.train.distributed import OptimizerState
from thinkgen.train.logs import MetricsLogger
from thinkgen.train.optim import build_optimizer, build_scheduler
from thinkgen.world.detect import Detection, DetectorConfig, WorldDetector
from thinkgen.world.scenarios import generate, pick_scenario, resolve_scenarios
from thinkgen.world.scene import BACKGROUND_RGB, COLOURS, TEXT_RGB, WorldConfig, get_preset

logger = logging.getLogger(__name__)

# Centres of the same object read from two images of one scene differ by anti-aliasing only.
CENTRE_TOLERANCE = 0.04
# Images per forward in checks and statistics: bounds memory, whatever the number of images.
CHUNK = 64


@dataclass
class CodecResult:
    """What :func:`train` returns: last step, the loss of each step run, the test check, the codec."""

    step: int
    losses: list[float] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)
    codec: NanoAutoencoder | None = None


def world_palette(world: WorldConfig) -> list[list[int]]:
    """The colours a scene of ``world`` can contain (its colours plus the text colour), as RGB lists."""
    rgb = [COLOURS[c] for c in world.colours]
    if TEXT_RGB not in rgb:
        rgb.append(TEXT_RGB)
    return [list(c) for c in rgb]


def same_detection(a: Detection, b: Detection) -> bool:
    """Whether two detections name the same objects (shape, colour, centre) and the same words."""
    if sorted(w.text for w in a.words) != sorted(w.text for w in b.words) or len(a.objects) != len(b.objects):
        return False
    key = lambda o: (o.shape, o.colour, o.centre)  # noqa: E731
    for x, y in zip(sorted(a.objects, key=key), sorted(b.objects, key=key)):
        if x.shape != y.shape or x.colour != y.colour:
            return False
        if max(abs(p - q) for p, q in zip(x.centre, y.centre)) > CENTRE_TOLERANCE:
            return False
    return True


class WorldImages:
    """Every image of a world sample stream in order (each sample's target, then its inputs), forever.

    A checkpoint piece: its state is the position in the stream, so a resumed run continues at the image
    after the last one taken.
    """

    def __init__(self, world: WorldConfig, scenarios: Sequence[str], split: str, seed: int) -> None:
        self.world = world
        self.scenarios = tuple(s for name in scenarios for s in resolve_scenarios(name))
        self.split = split
        self.seed = seed
        self.sample = 0  # the sample the next image comes from
        self.offset = 0  # images of that sample already taken
        self._cached: tuple[int, list[Image.Image]] | None = None

    def _images(self, index: int) -> list[Image.Image]:
        # A batch boundary inside a sample would otherwise render it twice.
        if self._cached is None or self._cached[0] != index:
            scenario = pick_scenario(self.scenarios, seed=self.seed, split=self.split, index=index)
            sample = generate(scenario, index, config=self.world, seed=self.seed, split=self.split)
            self._cached = (index, [sample.target_image(), *sample.input_images()])
        return self._cached[1]

    def take(self, n: int) -> torch.Tensor:
        """The next ``n`` images as ``(n, 3, H, W)`` in [-1, 1]."""
        images: list[Image.Image] = []
        while len(images) < n:
            rest = self._images(self.sample)[self.offset:self.offset + n - len(images)]
            images += rest
            self.offset += len(rest)
            if self.offset == len(self._images(self.sample)):
                self.sample, self.offset = self.sample + 1, 0
        return pil_to_tensor(images)

    def state_dict(self) -> dict[str, Any]:
        return {"sample": self.sample, "offset": self.offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sample, self.offset = int(state["sample"]), int(state["offset"])


def palette_loss(
    model: NanoAutoencoder,
    images: torch.Tensor,
    ink_weight: float,
    latent_noise: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Cross-entropy of the decoded classes of ``images`` (``(B, 3, H, W)`` in [-1, 1]) against their
    palette labels, ink pixels weighted by ``ink_weight``, latents jittered by noise of std
    ``latent_noise`` drawn on the CPU from ``generator`` (the global generator when ``None``)."""
    labels = model.palette_labels(images)  # (B, H, W)
    raw = model.encode_raw(images)  # (B, C, h, w)
    noise = torch.randn(raw.shape, generator=generator).to(raw.device)
    logits = model.decode_logits(raw + latent_noise * noise)  # (B, K, H, W)
    weights = torch.where(labels > 0, ink_weight, 1.0)
    return (F.cross_entropy(logits, labels, reduction="none") * weights).sum() / weights.sum()


@torch.no_grad()
def round_trip_check(model: NanoAutoencoder, images: torch.Tensor, detector: WorldDetector) -> dict[str, float]:
    """Fractions of ``images`` (``(N, 3, H, W)`` in [-1, 1]) that come back pixel-exact and judge-exact
    after encode → decode, and the mean number of wrong pixels per image."""
    was_training = model.training
    model.eval()
    pixel_exact = judge_exact = wrong = 0
    for chunk in images.split(CHUNK):
        chunk = chunk.to(model.device)
        labels = model.palette_labels(chunk)
        mismatch = (model.decode_logits(model.encode_raw(chunk)).argmax(1) != labels).flatten(1).sum(1)
        pixel_exact += int((mismatch == 0).sum())
        wrong += int(mismatch.sum())
        decoded = model.decode(model.encode(chunk))
        for original, rebuilt in zip(tensor_to_pil(chunk), tensor_to_pil(decoded)):
            judge_exact += same_detection(detector.detect(original), detector.detect(rebuilt))
    model.train(was_training)
    n = images.shape[0]
    return {"pixel_exact": pixel_exact / n, "wrong_px_per_image": wrong / n, "judge_exact": judge_exact / n}


@torch.no_grad()
def set_statistics(model: NanoAutoencoder, images: torch.Tensor) -> None:
    """Normalise the codec's latents by their per-channel statistics on ``images``."""
    model.set_latent_statistics(torch.cat([model.encode_raw(c.to(model.device)) for c in images.split(CHUNK)]))


def train(config: CodecConfig) -> CodecResult:
    """Run (or resume) the codec stage. See the module docstring for the command.

    Example:
        >>> from thinkgen.train.config import load_recipe
        >>> result = train(load_recipe("recipes/nano/codec.toml", ["run.max_steps=20"]))
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("the codec stage runs in one process; start it without torchrun / accelerate launch")
    # ---- init
    output_dir = Path(config.run.output_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    set_seed(config.run.seed)
    R.write_config(output_dir, config, True)
    world = get_preset(config.model.preset)
    detector = WorldDetector(DetectorConfig.for_world(world))
    data = config.data

    def stream(split: str) -> WorldImages:
        return WorldImages(world, data.scenarios, split, data.seed)

    val = stream("val").take(data.val_images)

    # ---- model, optimizer
    model = NanoAutoencoder(
        palette=world_palette(world),
        background=list(BACKGROUND_RGB),
        latent_channels=config.model.latent_channels,
        downscale_factor=config.model.downscale_factor,
        base_channels=config.model.base_channels,
        blocks_per_stage=config.model.blocks_per_stage,
    ).to(device).train()
    logger.info("codec: %.3fM parameters", sum(p.numel() for p in model.parameters()) / 1e6)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, config.run.max_steps)

    # ---- checkpoints
    train_images = stream("train")
    train_state = ValueState(step=0, samples=0, test={})
    shared = {"model": model, "optimizer": OptimizerState(model, optimizer), "scheduler": scheduler,
              "data": train_images, "train_state": train_state}
    per_process = {"rng": RNGState()}
    manager = CheckpointManager(output_dir / R.CHECKPOINT_DIR, config.run.keep_last, 0, lambda: None)
    step = R.resume(config.run, manager, shared, per_process)
    metrics = MetricsLogger(output_dir, True, config.run.use_tensorboard, step)
    progress = R.LoopProgress(step, config.run.max_steps, True)

    # ---- the loop
    budget = R.TimeBudget(config.run.max_minutes)
    while step < config.run.max_steps:
        batch = train_images.take(data.batch_size).to(device)
        generator = R.item_generator(config.run.seed, step, 0)
        loss = palette_loss(model, batch, config.train.ink_weight, config.train.latent_noise, generator)
        loss.backward()
        grad_norm = 0.0
        if config.optim.max_grad_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.max_grad_norm))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        samples = train_state.values["samples"] + data.batch_size
        train_state.load_state_dict({"step": step, "samples": samples})
        progress.advance(loss.item(), data.batch_size)

        out_of_time = budget.spent()
        last = step == config.run.max_steps or out_of_time
        row: dict[str, float | int] = {}
        if step % config.run.log_every == 0 or last:
            row.update({"loss": progress.losses[-1], "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                        "samples_per_s": progress.samples_per_s(), "samples": samples})
        checks_start = time.perf_counter()
        if config.train.eval_every and step % config.train.eval_every == 0 or last:
            row.update({f"val_{k}": v for k, v in round_trip_check(model, val, detector).items()})
        if last:
            # Before the last checkpoint, so that a run killed after it has nothing left but the export.
            set_statistics(model, stream("train").take(data.stats_images))
            test = round_trip_check(model, stream("test").take(data.test_images), detector)
            train_state.load_state_dict({"test": test})
            row.update({f"test_{k}": v for k, v in test.items()})
        progress.exclude(time.perf_counter() - checks_start)
        if row:
            metrics.log(step, row)
        if config.run.save_every and step % config.run.save_every == 0 or last:
            manager.save(step, shared, per_process)
        if out_of_time:
            budget.report(step, config.run.max_steps)
            break

    # ---- export
    progress.close()
    metrics.close()
    codec = model.to("cpu").eval()
    codec.save_pretrained(output_dir / "final")
    logger.info("wrote %s", output_dir / "final")
    return CodecResult(step=step, losses=progress.losses, test=dict(train_state.values["test"]), codec=codec)
