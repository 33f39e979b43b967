"""A torch ``Dataset`` that makes world samples on the fly, so training needs no files.

This is the only world module that imports torch; the rest of the world works without it.

Example:
    >>> from torch.utils.data import DataLoader
    >>> data = WorldDataset(10_000, scenarios=["composition", "edit"], output_type="pt")
    >>> loader = DataLoader(data, batch_size=32, shuffle=True, collate_fn=collate_world)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .sample import WorldSample
from .scenarios import SCENARIOS, ScenarioMix, generate, pick_scenario
from .scene import PRESETS, WorldConfig
from .splits import check_split

OUTPUT_TYPES = ("pil", "pt")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a float tensor in [0, 1], shape (3, H, W)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (3, H, W)


class WorldDataset(Dataset):
    """``length`` world samples of a scenario mix, generated when indexed.

    Item ``i`` is sample ``i`` of the mix's stream (see :func:`~thinkgen.world.scenarios.pick_scenario`),
    the same on every call, in any worker, after any restart.

    Args:
        length: number of items.
        scenarios: a scenario name, a list taken in turn, or a mapping of name → weight.
        split: ``train``, ``val`` or ``test``.
        config: the world (default: ``nano``).
        seed: the stream's seed.
        output_type: ``"pil"`` (PIL images) or ``"pt"`` (float tensors in [0, 1], (3, H, W)).
    """

    def __init__(
        self,
        length: int,
        *,
        scenarios: ScenarioMix = SCENARIOS,
        split: str = "train",
        config: WorldConfig | None = None,
        seed: int = 0,
        output_type: str = "pil",
    ) -> None:
        if length < 1:
            raise ValueError(f"length={length} must be >= 1")
        check_split(split)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}; allowed: {', '.join(OUTPUT_TYPES)}")
        pick_scenario(scenarios, seed=seed, split=split, index=0)  # validates the mix up front
        self.length = length
        self.scenarios = scenarios
        self.split = split
        self.config = config or PRESETS["nano"]
        self.seed = seed
        self.output_type = output_type

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int) -> WorldSample:
        """The :class:`WorldSample` behind item ``index``."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} is out of range for a dataset of {self.length}")
        scenario = pick_scenario(self.scenarios, seed=self.seed, split=self.split, index=index)
        return generate(scenario, index, config=self.config, seed=self.seed, split=self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Item ``index``: texts, spec (as a dict), ``target_image`` and ``input_images`` (a list)."""
        sample = self.sample(index)
        convert = to_tensor if self.output_type == "pt" else (lambda image: image)
        return {
            "index": index,
            "scenario": sample.scenario,
            "task_type": sample.task_type,
            "instruction": sample.instruction,
            "reasoning": sample.reasoning,
            "answer": sample.answer,
            "spec": sample.spec.to_dict(),
            "target_image": convert(sample.target_image()),
            "input_images": [convert(image) for image in sample.input_images()],
        }


def collate_world(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch items of :class:`WorldDataset`: tensors of ``target_image`` stacked to (B, 3, H, W); every
    other field (and PIL images) kept as a list, since edit samples carry inputs and t2i ones do not."""
    out: dict[str, Any] = {key: [item[key] for item in batch] for key in batch[0]}
    if isinstance(out["target_image"][0], torch.Tensor):
        out["target_image"] = torch.stack(out["target_image"])
    return out
