"""Training data: sources (the world on the fly, JSONL + image files), mixing, size buckets, loading.

How a batch is made, and why it resumes exactly:

1. :class:`BatchPlanner` walks a deterministic stream. Position ``n`` picks a source with probability
   ∝ its weight (from a random stream seeded by ``(seed, n)``), takes that source's next item, and files
   it under its size bucket; when a bucket holds ``global_batch_size`` items, they are the next global
   batch. Its whole state is a few integers and the pending buckets' item ids, saved as JSON in every
   checkpoint: a resumed run plans the very same batches.
2. Every process plans the same global batch and loads only its own slice of it, split in micro-batches
   (:class:`RankBatchSampler`), so ``N`` processes see exactly the samples one process would.
3. :class:`PlannedDataset` loads one item by id. A broken item (unreadable image, bad record) comes back
   as a :class:`BrokenItem`; the trainer drops it from the batch, counts it and reports it in the log.

:func:`build_sources` is the validation pass: every JSONL line is parsed and every image file checked
before any model is built; problems are reported as ``file:line: field: problem``.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from thinkgen.glyphs import EditMarks, edit_marks
from thinkgen.imageio import load_image
from thinkgen.train.config import DataConfig, SourceConfig
from thinkgen.world.sample import WorldSample
from thinkgen.world.scenarios import generate, pick_kind, pick_scenario, resolve_scenarios
from thinkgen.world.scene import SceneObject, Word, get_preset
from thinkgen.world.splits import check_split

logger = logging.getLogger(__name__)

TASK_TYPES = ("t2i", "edit")
MAX_REPORTED_ERRORS = 20  # a validation error lists this many problems, then a count of the rest

ItemId = tuple[int, int]  # (source id, item index within the source's stream)


class SampleError(Exception):
    """A sample that cannot be used (missing or unreadable image, bad record); it is skipped and counted."""


@dataclass
class Record:
    """One training sample, whatever its source.

    Attributes:
        instruction: The user prompt.
        answer: The instruction written after ``</think>`` (empty when the source has none).
        reasoning: The thought inside ``<think>…</think>`` (may be empty).
        task_type: ``t2i`` or ``edit``.
        input_images: Input images (edits, reflection), RGB.
        output_image: The target image, RGB (``None`` when it was not asked for).
        target_words: The words of the target and their boxes (world sources only): what a glyph reference
            shows.
        target_objects: The objects of the target (world sources only): where a glyph reference with object
            marks puts its boxes.
        edit_marks: What an edit of one input image changes (world sources only; ``None`` elsewhere):
            the edit marks reference of :mod:`thinkgen.glyphs`.
    """

    instruction: str
    answer: str
    reasoning: str
    task_type: str
    input_images: list[Image.Image]
    output_image: Image.Image | None
    target_words: tuple[Word, ...] = ()
    target_objects: tuple[SceneObject, ...] = ()
    edit_marks: EditMarks | None = None


# ---- image sizes -----------------------------------------------------------------------------------


def fitted_size(width: int, height: int, max_pixels: int, multiple: int) -> tuple[int, int]:
    """Size after :func:`fit_image`: downscaled (aspect kept) to ≤ ``max_pixels``, sides cut to ``multiple``."""
    scale = min(1.0, math.sqrt(max_pixels / (width * height)))
    new_width = int(width * scale) // multiple * multiple
    new_height = int(height * scale) // multiple * multiple
    if new_width < multiple or new_height < multiple:
        raise SampleError(f"image of {width}x{height} is smaller than one {multiple}-pixel cell")
    return new_width, new_height


def fit_image(image: Image.Image, max_pixels: int, multiple: int) -> Image.Image:
    """Resize to the :func:`fitted_size` scale and centre-crop to it (never upscales)."""
    width, height = fitted_size(image.width, image.height, max_pixels, multiple)
    scale = min(1.0, math.sqrt(max_pixels / (image.width * image.height)))
    if scale < 1.0:
        image = image.resize(
            (max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.LANCZOS
        )
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


# ---- sources -----------------------------------------------------------------------------------------


class WorldSource:
    """The synthetic world as an endless stream: item ``i`` is world sample ``i`` of the scenario mix."""

    def __init__(self, config: SourceConfig) -> None:
        self.name = config.name
        self.scenarios = tuple(s for name in config.scenarios for s in resolve_scenarios(name))
        check_split(config.split)
        self.world = get_preset(config.preset)
        self.seed = config.seed
        self.split = config.split
        self.kinds = config.kinds

    def _sample(self, index: int) -> WorldSample:
        scenario = pick_scenario(self.scenarios, seed=self.seed, split=self.split, index=index)
        kind = pick_kind(self.kinds, scenario, seed=self.seed, split=self.split, index=index)
        return generate(scenario, index, config=self.world, seed=self.seed, split=self.split, kind=kind)

    def image_size(self, index: int) -> tuple[int, int]:
        return self.world.canvas_px, self.world.canvas_px

    def texts(self, index: int) -> list[str]:
        """The texts of item ``index`` (no image is rendered)."""
        sample = self._sample(index)
        return [sample.instruction, sample.reasoning, sample.answer]

    def load(self, index: int, with_output: bool = True) -> Record:
        sample = self._sample(index)
        return Record(
            instruction=sample.instruction,
            answer=sample.answer,
            reasoning=sample.reasoning,
            task_type=sample.task_type,
            input_images=sample.input_images(),
            output_image=sample.target_image() if with_output else None,
            target_words=sample.target.words,
            target_objects=sample.target.objects,
            edit_marks=edit_marks(sample.inputs[0], sample.target, self.world.canvas_px)
            if len(sample.inputs) == 1 else None,
        )


class JsonlSource:
    """Records of a JSONL file (the world export schema), visited in a new random order every epoch.

    Only the byte offsets of the lines are held in memory; a record is read when its item is loaded.

    Args:
        config: The source's settings.
        offsets: Byte offset of every record line (from :func:`validate_jsonl`).
        seed: Seeds the per-epoch shuffles.
    """

    def __init__(self, config: SourceConfig, offsets: np.ndarray, seed: int) -> None:
        self.name = config.name
        self.path = Path(config.path)
        self.offsets = offsets
        self.seed = seed
        self._order: tuple[int, np.ndarray] | None = None

    def _line(self, index: int) -> int:
        """Line (record number) of stream item ``index``: epoch ``index // n`` has its own permutation."""
        epoch, position = divmod(index, len(self.offsets))
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order = (epoch, rng.permutation(len(self.offsets)))
        return int(self._order[1][position])

    def _record(self, index: int) -> tuple[dict[str, Any], int]:
        line = self._line(index)
        with self.path.open("rb") as f:
            f.seek(int(self.offsets[line]))
            text = f.readline()
        try:
            return json.loads(text), line
        except json.JSONDecodeError as err:
            raise SampleError(f"{self.path}: record {line + 1} is not JSON ({err})") from None

    def _image(self, relative: str, where: str) -> Image.Image:
        try:
            return load_image(self.path.parent / relative)
        except (OSError, ValueError) as err:
            raise SampleError(f"{where}: {err}") from None

    def image_size(self, index: int) -> tuple[int, int]:
        record, line = self._record(index)
        if "width" in record and "height" in record:
            return int(record["width"]), int(record["height"])
        # Only the header is read: PIL decodes pixels lazily.
        path = self.path.parent / record["output_image"]
        try:
            with Image.open(path) as image:
                return image.size
        except OSError as err:
            raise SampleError(f"{self.path}: record {line + 1}: output_image {path}: {err}") from None

    def texts(self, index: int) -> list[str]:
        """The texts of item ``index``."""
        record, _ = self._record(index)
        return [record.get(name, "") for name in ("instruction", "reasoning", "answer")]

    def load(self, index: int, with_output: bool = True) -> Record:
        record, line = self._record(index)
        where = f"{self.path}: record {line + 1}"
        output = self._image(record["output_image"], f"{where}: output_image") if with_output else None
        inputs = [self._image(p, f"{where}: input_images") for p in record.get("input_images", [])]
        return Record(
            instruction=record["instruction"],
            answer=record.get("answer", ""),
            reasoning=record.get("reasoning", ""),
            task_type=record.get("task_type", "edit" if inputs else "t2i"),
            input_images=inputs,
            output_image=output,
        )


Source = WorldSource | JsonlSource


def validate_jsonl(path: str | Path, required: Sequence[str] = ("instruction", "output_image")) -> np.ndarray:
    """Check every line of a JSONL data file before training; return the byte offsets of its records.

    Checks: each non-empty line is a JSON object; required fields are present; text fields are strings
    (``instruction`` non-empty); ``task_type`` is ``t2i`` or ``edit``; ``output_image`` and every
    ``input_images`` entry name existing files (relative to the JSONL's folder); ``width``/``height``,
    when given, are positive integers.

    Args:
        path: The JSONL file.
        required: Fields every record must have.

    Returns:
        ``(num_records,)`` int64 byte offsets.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Listing problems as ``file:line: field: problem`` (first ``MAX_REPORTED_ERRORS``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    errors: list[str] = []
    offsets: list[int] = []
    offset = 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            problems = _record_problems(raw, path.parent, required)
            errors.extend(f"{path}:{number}: {problem}" for problem in problems)
            if not problems:
                offsets.append(start)
    if errors:
        shown = "\n  ".join(errors[:MAX_REPORTED_ERRORS])
        more = f"\n  … and {len(errors) - MAX_REPORTED_ERRORS} more" if len(errors) > MAX_REPORTED_ERRORS else ""
        raise ValueError(f"{len(errors)} problem(s) in {path}:\n  {shown}{more}")
    if not offsets:
        raise ValueError(f"{path} holds no records")
    return np.asarray(offsets, dtype=np.int64)


def _record_problems(raw: bytes, folder: Path, required: Sequence[str]) -> list[str]:
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return [f"line: not valid JSON ({err})"]
    if not isinstance(record, dict):
        return ["line: must be a JSON object"]
    problems = [f"{name}: missing" for name in required if name not in record]
    for name in ("instruction", "answer", "reasoning", "output_image"):
        if name in record and not isinstance(record[name], str):
            problems.append(f"{name}: must be a string, got {record[name]!r}")
    if isinstance(record.get("instruction"), str) and not record["instruction"].strip():
        problems.append("instruction: empty")
    if "task_type" in record and record["task_type"] not in TASK_TYPES:
        problems.append(f"task_type: {record['task_type']!r} is not one of {', '.join(TASK_TYPES)}")
    for name in ("width", "height"):
        value = record.get(name)
        if name in record and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            problems.append(f"{name}: must be a positive integer, got {value!r}")
    images = record.get("input_images", [])
    if not isinstance(images, list) or any(not isinstance(p, str) for p in images):
        problems.append(f"input_images: must be a list of paths, got {images!r}")
        images = []
    named = [("output_image", record["output_image"])] if isinstance(record.get("output_image"), str) else []
    for name, relative in [*named, *(("input_images", p) for p in images)]:
        if not (folder / relative).is_file():
            problems.append(f"{name}: file not found: {folder / relative}")
    return problems


def build_sources(config: DataConfig, seed: int, required: Sequence[str]) -> list[Source]:
    """Build (and validate) every source of ``config``: the data validation pass, run before compute.

    Args:
        config: ``[data]``.
        seed: The run's seed (shuffles JSONL epochs).
        required: Fields a JSONL record must have for this trainer.
    """
    sources: list[Source] = []
    for i, source in enumerate(config.sources):
        if source.kind == "world":
            try:
                sources.append(WorldSource(source))
            except ValueError as err:
                raise ValueError(f"data.sources[{i}] ({source.name}): {err}") from None
        else:
            sources.append(JsonlSource(source, validate_jsonl(source.path, required), seed + i))
    return sources


# ---- batch planning ----------------------------------------------------------------------------------


class BatchPlanner:
    """Plans global batches: source mixing by weight, one size bucket per batch (Stateful, exact resume).

    Args:
        sources: The sources.
        weights: Their relative shares (any positive numbers).
        seed: Seeds the source picks.
        global_batch_size: Items per planned batch.
        bucket_of: ``(source, index) → bucket key``; raises :class:`SampleError` for an item that cannot
            be sized (it is skipped and counted).
    """

    def __init__(
        self,
        sources: Sequence[Source],
        weights: Sequence[float],
        seed: int,
        global_batch_size: int,
        bucket_of: Callable[[Source, int], str],
    ) -> None:
        self.sources = list(sources)
        self.weights = list(weights)
        self.seed = seed
        self.global_batch_size = global_batch_size
        self.bucket_of = bucket_of
        self.position = 0
        self.counters = [0] * len(self.sources)
        self.pending: dict[str, list[ItemId]] = {}
        self.num_skipped = 0

    def _pick(self, position: int) -> int:
        if len(self.sources) == 1:
            return 0
        # A string seed is hashed with SHA-512 by `random`: the same pick in every process and every run.
        return random.Random(f"{self.seed}:{position}").choices(range(len(self.sources)), self.weights)[0]

    def next_batch(self) -> list[ItemId]:
        """The next global batch: ``global_batch_size`` item ids of one size bucket."""
        while True:
            source_id = self._pick(self.position)
            self.position += 1
            index = self.counters[source_id]
            self.counters[source_id] += 1
            try:
                key = self.bucket_of(self.sources[source_id], index)
            except SampleError as err:
                self.num_skipped += 1
                logger.warning("skipped a sample of %s: %s", self.sources[source_id].name, err)
                continue
            bucket = self.pending.setdefault(key, [])
            bucket.append((source_id, index))
            if len(bucket) == self.global_batch_size:
                return self.pending.pop(key)

    def state_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "counters": list(self.counters),
            "pending": {key: [list(item) for item in items] for key, items in self.pending.items()},
            "num_skipped": self.num_skipped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["counters"]) != len(self.sources):
            raise ValueError(
                f"the checkpoint's data state has {len(state['counters'])} sources, the recipe {len(self.sources)}"
            )
        self.position = int(state["position"])
        self.counters = [int(c) for c in state["counters"]]
        self.pending = {key: [(int(s), int(i)) for s, i in items] for key, items in state["pending"].items()}
        self.num_skipped = int(state["num_skipped"])


class RankBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """This process's micro-batches of each planned global batch, as ``(source, index, slot)`` triples.

    Global batch slot ``s`` (0 ≤ s < G) goes to micro-step ``m`` and rank ``r`` with
    ``s ∈ [(m·R + r)·b, (m·R + r + 1)·b)``; ``slot`` seeds that sample's noise and dropout, so they do not
    depend on how the batch was split. After each global batch the planner's state is queued in
    ``states``: the trainer pops one per optimizer step, which stays right however far a DataLoader
    prefetches.

    Args:
        planner: The shared plan.
        rank, world_size: This process and the number of processes.
        micro_batch_size: Items per micro-batch.
    """

    def __init__(self, planner: BatchPlanner, rank: int, world_size: int, micro_batch_size: int) -> None:
        per_step = micro_batch_size * world_size
        if planner.global_batch_size % per_step:
            raise ValueError(
                f"data.global_batch_size ({planner.global_batch_size}) must be a multiple of "
                f"data.micro_batch_size × processes ({micro_batch_size} × {world_size})"
            )
        self.planner = planner
        self.rank = rank
        self.world_size = world_size
        self.micro_batch_size = micro_batch_size
        self.num_micro_steps = planner.global_batch_size // per_step
        self.states: deque[dict[str, Any]] = deque()

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        while True:
            plan = self.planner.next_batch()
            self.states.append(self.planner.state_dict())
            for micro in range(self.num_micro_steps):
                start = (micro * self.world_size + self.rank) * self.micro_batch_size
                yield [(*plan[slot], slot) for slot in range(start, start + self.micro_batch_size)]


@dataclass
class BrokenItem:
    """An item that failed to load: where it came from and why."""

    source: str
    index: int
    reason: str


class PlannedDataset(Dataset):
    """Loads the items the planner names; ``transform(record, slot)`` turns a record into a training item.

    Args:
        sources: The sources.
        transform: Record → item dict (may raise :class:`SampleError`).
        with_output: Load target images (DiT stages) or not (MLLM stage).
    """

    def __init__(
        self, sources: Sequence[Source], transform: Callable[[Record], dict[str, Any]], with_output: bool
    ) -> None:
        self.sources = list(sources)
        self.transform = transform
        self.with_output = with_output

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any] | BrokenItem:
        source_id, index, slot = key
        source = self.sources[source_id]
        try:
            return {**self.transform(source.load(index, self.with_output)), "slot": slot}
        except SampleError as err:
            return BrokenItem(source.name, index, str(err))


def collate_items(items: list[dict[str, Any] | BrokenItem]) -> dict[str, Any]:
    """Keep items as a list (the trainer stacks what it needs) and set broken ones apart."""
    return {
        "items": [item for item in items if not isinstance(item, BrokenItem)],
        "broken": [item for item in items if isinstance(item, BrokenItem)],
    }


def build_loader(
    config: DataConfig,
    planner: BatchPlanner,
    dataset: PlannedDataset,
    rank: int,
    world_size: int,
    seed: int,
) -> tuple[DataLoader, RankBatchSampler]:
    """The DataLoader of this process and its batch sampler (whose ``states`` the trainer pops)."""
    sampler = RankBatchSampler(planner, rank, world_size, config.micro_batch_size)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=config.num_workers,
        collate_fn=collate_items,
        # Its own generator: starting the workers must not draw from the global RNG, whose state is part
        # of the checkpoint (items are pure functions of their ids, so worker seeds do not matter).
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=config.num_workers > 0,
    )
    return loader, sampler
