"""Writing samples to disk: PNG images and one JSONL record per sample.

Each record has the fields an image-generation trainer reads (``task_type``, ``instruction``,
``input_images``, ``output_image``; image paths relative to the JSONL file) plus the world's own:
``scenario``, ``reasoning``, ``answer``, ``spec``, the scenes and ``meta``. The world's settings go to
``world.json`` beside the JSONL, so :func:`load_samples` can rebuild every sample exactly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .sample import WorldSample
from .scene import WorldConfig

logger = logging.getLogger(__name__)

WORLD_FILE = "world.json"


def _save(sample: WorldSample, image_dir: Path, jsonl_dir: Path) -> tuple[list[str], str]:
    stem = f"{sample.split}_{sample.scenario}_{sample.index:06d}"
    inputs = []
    for k, image in enumerate(sample.input_images()):
        path = image_dir / f"{stem}_input{k}.png"
        image.save(path)
        inputs.append(path.relative_to(jsonl_dir).as_posix())
    path = image_dir / f"{stem}_output.png"
    sample.target_image().save(path)
    return inputs, path.relative_to(jsonl_dir).as_posix()


def sample_record(sample: WorldSample, input_images: list[str], output_image: str) -> dict[str, Any]:
    """The JSONL record of ``sample`` whose images were saved at the given relative paths."""
    return {
        "task_type": sample.task_type,
        "instruction": sample.instruction,
        "input_images": input_images,
        "output_image": output_image,
        **sample.to_dict(),
    }


def export_samples(
    samples: Iterable[WorldSample], out_dir: str | Path, *, jsonl_name: str = "samples.jsonl",
    image_dir: str = "images",
) -> Path:
    """Render ``samples`` to ``out_dir/image_dir/*.png`` and write ``out_dir/jsonl_name``.

    Args:
        samples: the samples, all from one world.
        out_dir: the output folder (created if missing).
        jsonl_name: the records file's name.
        image_dir: the images' folder, relative to ``out_dir``.

    Returns:
        The path of the JSONL file.

    Raises:
        ValueError: when the samples come from different worlds.
    """
    out = Path(out_dir)
    images = out / image_dir
    images.mkdir(parents=True, exist_ok=True)
    jsonl = out / jsonl_name
    config: WorldConfig | None = None
    num_written = 0
    with jsonl.open("w", encoding="utf-8") as f:
        for sample in samples:
            if config is None:
                config = sample.config
            elif sample.config != config:
                raise ValueError("export_samples needs samples from one world; got two different configs")
            inputs, output = _save(sample, images, out)
            f.write(json.dumps(sample_record(sample, inputs, output)) + "\n")
            num_written += 1
    if config is not None:
        (out / WORLD_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %d samples to %s", num_written, jsonl)
    return jsonl


def load_samples(jsonl: str | Path) -> list[WorldSample]:
    """Read back the samples of a file written by :func:`export_samples` (needs its ``world.json``)."""
    path = Path(jsonl)
    world = path.parent / WORLD_FILE
    if not world.is_file():
        raise FileNotFoundError(f"{world} is missing; it is written beside the JSONL by export_samples")
    config = WorldConfig.from_dict(json.loads(world.read_text(encoding="utf-8")))
    with path.open(encoding="utf-8") as f:
        return [WorldSample.from_dict(json.loads(line), config) for line in f if line.strip()]
