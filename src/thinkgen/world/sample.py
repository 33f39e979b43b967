"""The record of one world sample: prompt, reasoning, answer, spec and the scenes to render."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from .render import render
from .scene import Scene, Spec, WorldConfig

TaskType = Literal["t2i", "edit"]


@dataclass
class Draft:
    """What a scenario generator makes before bookkeeping (split, index, seed) is attached.

    ``inputs`` are the scenes of the input images (empty for text-to-image); ``meta`` holds
    machine-readable details of how the sample was made (sub-task, facts used, flaw …).
    """

    instruction: str
    answer: str
    spec: Spec
    target: Scene
    inputs: tuple[Scene, ...] = ()
    reasoning: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorldSample:
    """One sample of the world.

    Args:
        scenario: the scenario that made it (``composition``, ``text``, ``edit``, ``reasoning``,
            ``reasoning_edit``, ``reflection``).
        task_type: ``"t2i"`` (no input image) or ``"edit"`` (input images given).
        instruction: the user prompt.
        reasoning: the thinking trace that belongs inside ``<think>…</think>``; may be empty.
        answer: the instruction written after ``</think>``, the one the image generator follows.
        spec: what a correct output image must show.
        target: the scene of the expected output image.
        inputs: the scenes of the input images (for reflection: the flawed image).
        config: the world the scenes live in (sets the render size).
        split: ``train``, ``val`` or ``test``.
        index: position in its split's stream.
        seed: the stream's seed.
        meta: how the sample was made (``kind``, ``facts``, ``flaw``, ``held_out`` …).
    """

    scenario: str
    task_type: TaskType
    instruction: str
    reasoning: str
    answer: str
    spec: Spec
    target: Scene
    inputs: tuple[Scene, ...]
    config: WorldConfig
    split: str
    index: int
    seed: int
    meta: dict[str, Any] = field(default_factory=dict)

    def target_image(self) -> Image.Image:
        """The expected output image, ``config.canvas_px`` square, RGB."""
        return render(self.target, self.config.canvas_px)

    def input_images(self) -> list[Image.Image]:
        """The input images, one per input scene (empty for text-to-image)."""
        return [render(scene, self.config.canvas_px) for scene in self.inputs]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of everything but the config (see :meth:`from_dict`)."""
        return {
            "scenario": self.scenario,
            "task_type": self.task_type,
            "instruction": self.instruction,
            "reasoning": self.reasoning,
            "answer": self.answer,
            "spec": self.spec.to_dict(),
            "target_scene": self.target.to_dict(),
            "input_scenes": [s.to_dict() for s in self.inputs],
            "split": self.split,
            "index": self.index,
            "seed": self.seed,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], config: WorldConfig) -> WorldSample:
        """Rebuild a sample written by :meth:`to_dict`, in the world of ``config``."""
        return cls(
            scenario=data["scenario"],
            task_type=data["task_type"],
            instruction=data["instruction"],
            reasoning=data["reasoning"],
            answer=data["answer"],
            spec=Spec.from_dict(data["spec"]),
            target=Scene.from_dict(data["target_scene"]),
            inputs=tuple(Scene.from_dict(s) for s in data["input_scenes"]),
            config=config,
            split=data["split"],
            index=int(data["index"]),
            seed=int(data["seed"]),
            meta=dict(data.get("meta", {})),
        )
