"""Pieces every trainer's loop uses in the same way: seeds, data plumbing, resume, optimizer step, progress.

Each is a plain function called from the loops in ``sft.py``, ``mllm_sft.py`` and ``codec.py``; the loops
stay the place to read what happens in which order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm import tqdm

from thinkgen.imageio import atomic_write_bytes
from thinkgen.train.checkpoint import CheckpointManager, Stateful
from thinkgen.train.config import DataConfig, RunConfig, config_to_dict
from thinkgen.train.data import BatchPlanner, BrokenItem, PlannedDataset, RankBatchSampler, Record, Source, build_loader

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"


def item_seed(seed: int, step: int, slot: int) -> int:
    """Seed of the randomness of one training sample (noise, time, dropout): a hash of its coordinates,
    so it does not depend on which process or micro-batch the sample lands in, nor on any RNG state."""
    digest = hashlib.sha256(f"{seed}:{step}:{slot}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def item_generator(seed: int, step: int, slot: int) -> torch.Generator:
    """A CPU generator seeded by :func:`item_seed`."""
    return torch.Generator().manual_seed(item_seed(seed, step, slot))


def write_config(output_dir: Path, config: Any, is_main: bool) -> None:
    """Record the resolved config beside the run (``config.json``)."""
    if is_main:
        text = json.dumps(config_to_dict(config), indent=2) + "\n"
        atomic_write_bytes(output_dir / CONFIG_FILE, text.encode())


def make_batches(
    accelerator: Accelerator,
    data: DataConfig,
    sources: Sequence[Source],
    seed: int,
    bucket_of: Callable[[Source, int], str],
    transform: Callable[[Record], dict[str, Any]],
    with_output: bool,
) -> tuple[BatchPlanner, Callable[[], tuple[Iterator[dict[str, Any]], RankBatchSampler]]]:
    """The data planner (a checkpoint piece) and a factory of this process's micro-batch iterator.

    The iterator is made by the factory only after a resume has restored the planner, so its first batch
    is the one after the checkpoint.
    """
    planner = BatchPlanner(sources, [s.weight for s in data.sources], seed, data.global_batch_size, bucket_of)
    dataset = PlannedDataset(sources, transform, with_output)

    def start() -> tuple[Iterator[dict[str, Any]], RankBatchSampler]:
        loader, sampler = build_loader(
            data, planner, dataset, accelerator.process_index, accelerator.num_processes, seed
        )
        return iter(loader), sampler

    return planner, start


def resume(
    run: RunConfig,
    manager: CheckpointManager,
    shared: Mapping[str, Stateful],
    per_process: Mapping[str, Stateful],
) -> int:
    """Load the newest checkpoint when the recipe allows it; returns the step to start from (0 if none)."""
    latest = manager.latest() if run.resume else None
    if latest is None:
        return 0
    manager.load(latest, shared, per_process)
    return int(shared["train_state"].state_dict()["step"])


def optimizer_step(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    max_grad_norm: float,
) -> float:
    """Clip, step, schedule, zero; returns the gradient norm before clipping (0 when clipping is off)."""
    grad_norm = 0.0
    if max_grad_norm > 0:
        params = [p for p in model.parameters() if p.requires_grad]
        grad_norm = float(accelerator.clip_grad_norm_(params, max_grad_norm))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


class TimeBudget:
    """``run.max_minutes``: whether this process's training loop has used its time. In a multi-process
    loop pass it to :func:`accumulate_step`, whose all-reduce makes every process learn it in the same step
    (the first clock past the budget decides), so all stop and save together."""

    def __init__(self, max_minutes: float) -> None:
        self.seconds = max_minutes * 60.0
        self.start = time.monotonic()

    def spent(self) -> bool:
        return bool(self.seconds) and time.monotonic() - self.start > self.seconds

    def report(self, step: int, max_steps: int) -> None:
        logger.info("time budget of %g min spent at step %d of %d: checkpoint saved; run again to continue",
                    self.seconds / 60.0, step, max_steps)


@dataclass
class StepTotals:
    """One optimizer step's statistics, summed over its micro-batches and over processes."""

    mean_loss: float
    samples: int
    broken: int
    out_of_time: bool


def accumulate_step(
    accelerator: Accelerator,
    model: torch.nn.Module,
    batches: Iterator[dict[str, Any]],
    num_micro_steps: int,
    loss_of: Callable[..., torch.Tensor],
    budget: TimeBudget,
    targets_of: Callable[[list[Any]], int] | None = None,
) -> StepTotals:
    """Forward and backward over the micro-batches of one optimizer step (gradients accumulate), then one
    all-reduce of the step's loss, sample counts and whether any process's time budget is spent.

    A micro-batch whose items all failed to load adds a zero loss, so that this process still joins the
    gradient all-reduce.

    With ``targets_of`` (the number of loss targets of some items, e.g. tokens), the step's loss is the mean
    over all its targets, whatever the split into processes and micro-batches: ``loss_of(items, normaliser)``
    must return the sum of its items' target losses divided by ``normaliser``, the step's targets over
    processes divided by its micro-batches over processes (accelerate then divides each micro-batch's loss by
    the accumulation steps, and DDP averages the processes).
    """
    normaliser = None
    micro_batches: Iterable[dict[str, Any]] = (next(batches) for _ in range(num_micro_steps))
    if targets_of is not None:  # the step's targets must be counted before its first backward
        micro_batches = list(micro_batches)
        (targets,) = reduce_sum(accelerator, [sum(targets_of(b["items"]) for b in micro_batches if b["items"])])
        normaliser = max(targets, 1.0) / (num_micro_steps * accelerator.num_processes)
    loss_sum, num_samples, num_broken = 0.0, 0, 0
    for batch in micro_batches:
        report_broken(batch["broken"])
        with accelerator.accumulate(model):
            if batch["items"]:
                loss = loss_of(batch["items"]) if normaliser is None else loss_of(batch["items"], normaliser)
            else:
                loss = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
            accelerator.backward(loss)
        loss_sum += loss.item()
        num_samples += len(batch["items"])
        num_broken += len(batch["broken"])
    loss_total, micro_total, samples, broken, spent = reduce_sum(
        accelerator, [loss_sum, num_micro_steps, num_samples, num_broken, float(budget.spent())]
    )
    return StepTotals(loss_total / micro_total, int(samples), int(broken), spent > 0)


class LoopProgress:
    """A supervised loop's progress bar, the losses of this call, and its throughput window."""

    def __init__(self, start_step: int, max_steps: int, is_main: bool) -> None:
        self.bar = progress_bar(start_step, max_steps, is_main)
        self.losses: list[float] = []
        self._window_start = time.perf_counter()
        self._window_samples = 0

    def advance(self, loss: float, samples: int) -> None:
        """Count one optimizer step."""
        self.losses.append(loss)
        self._window_samples += samples
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}")

    def samples_per_s(self) -> float:
        """Training samples per second since the last call (or the start); starts a new window."""
        elapsed = time.perf_counter() - self._window_start
        rate = self._window_samples / elapsed if elapsed > 0 else 0.0
        self._window_start, self._window_samples = time.perf_counter(), 0
        return rate

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` of non-training work (checks, sample grids) out of the throughput."""
        self._window_start += seconds

    def close(self) -> None:
        self.bar.close()


def report_broken(broken: Sequence[BrokenItem]) -> None:
    """Log the items of a micro-batch that failed to load (they are dropped from it)."""
    for item in broken:
        logger.warning("skipped a sample of %s (item %d): %s", item.source, item.index, item.reason)


def log_on_main_only(accelerator: Accelerator) -> None:
    """Silence this package's info and warnings on every process but the main one (errors still show)."""
    if not accelerator.is_main_process:
        logging.getLogger("thinkgen").setLevel(logging.ERROR)


def progress_bar(start_step: int, max_steps: int, is_main: bool) -> tqdm:
    """The run's progress bar (main process only)."""
    return tqdm(total=max_steps, initial=start_step, desc="train", disable=not is_main, dynamic_ncols=True)


def checkpoint_manager(accelerator: Accelerator, run: RunConfig) -> CheckpointManager:
    """The run's checkpoint manager under ``{output_dir}/checkpoints``."""
    return CheckpointManager(
        Path(run.output_dir) / CHECKPOINT_DIR, run.keep_last, accelerator.process_index, accelerator.wait_for_everyone
    )


def reduce_sum(accelerator: Accelerator, values: Sequence[float]) -> list[float]:
    """Sum small statistics over processes (one all-reduce)."""
    tensor = torch.tensor(list(values), dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(tensor, reduction="sum").tolist()
