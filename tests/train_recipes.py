"""Tiny recipes for the training tests: a 0.2M-parameter DiT over 64x64 pixels, the tiny MLLM, few steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

TINY_DIT = (
    "{ patch_size = 8, hidden_size = 48, num_layers = 1, num_refiner_layers = 1, num_attention_heads = 2, "
    "num_kv_heads = 1, multiple_of = 16, axes_dim_rope = [8, 8, 8], num_prepad_states = 4 }"
)


def sft_recipe(tmp_path: Path, extra: str = "", sources: str | None = None, name: str = "recipe.toml") -> Path:
    """Write a tiny stage recipe; ``extra`` adds TOML sections or keys (later keys must not repeat)."""
    sources = sources or '[[data.sources]]\nscenarios = ["composition", "edit"]\n'
    text = f"""trainer = "sft"
[run]
output_dir = "{tmp_path / 'run'}"
max_steps = 4
log_every = 1
save_every = 2
use_tensorboard = false
[model]
mllm = "tiny"
dit = {TINY_DIT}
[data]
global_batch_size = 4
micro_batch_size = 2
{sources}
[optim]
lr = 1e-3
[train]
mixed_precision = "no"
{extra}
"""
    path = tmp_path / name
    path.write_text(text)
    return path


def write_jsonl(folder: Path, records: list[dict[str, Any]], sizes: list[tuple[int, int]] | None = None) -> Path:
    """A JSONL data file with one solid-colour PNG per record (``output_image`` = ``img{i}.png``)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, record in enumerate(records):
        size = sizes[i] if sizes else (64, 64)
        Image.new("RGB", size, (40 * (i % 6), 80, 200)).save(folder / f"img{i}.png")
        lines.append(json.dumps({"output_image": f"img{i}.png", **record}))
    path = folder / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
