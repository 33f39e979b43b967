"""Checkpoints of everything a run needs to continue exactly: safetensors + JSON, written atomically.

A checkpoint is a folder ``checkpoints/step_{step:08d}/`` holding, for every ``Stateful`` piece (anything
with ``state_dict()`` / ``load_state_dict()``: trainable weights, optimizer, LR scheduler, data planner,
RNG, EMA, train counters), ``{name}.json`` (the structure, with tensors replaced by references) and
``{name}.safetensors`` (the tensors). Pieces that differ per process (the RNG) get a ``.rank{r}`` suffix.
Nothing is pickled.

Atomicity: every process writes into ``.tmp-step_…``; after a barrier the main process renames it to
``step_…`` (one ``rename``, atomic on POSIX). A run killed at any moment leaves either a complete
checkpoint or a stale temporary folder, which is ignored and removed by the next save. Old checkpoints
are pruned only after the new one is in place, so there is always one to resume from.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{8})$")
TMP_PREFIX = ".tmp-"
TENSOR_TAG = "__tensor__"
NDARRAY_TAG = "__ndarray__"


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# ---- nested states ↔ JSON + flat tensors ----------------------------------------------------------------


def flatten_state(state: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state into a JSON-ready structure and a flat ``{key: tensor}`` dict.

    Tensors (and numpy arrays) become ``{"__tensor__": key}`` / ``{"__ndarray__": key}`` references whose
    key is their path in the structure; tuples become lists; dict keys become strings.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            # A copy: safetensors refuses tensors that share memory (tied weights, views).
            tensors[path] = node.detach().to("cpu", copy=True).contiguous()
            return {TENSOR_TAG: path}
        if isinstance(node, np.ndarray):
            # Unsigned arrays (numpy's RNG keys) are stored widened: safetensors' torch side lacks uint32.
            array = node.astype(np.int64) if node.dtype.kind == "u" else np.array(node, copy=True)
            tensors[path] = torch.from_numpy(array)
            return {NDARRAY_TAG: path, "dtype": str(node.dtype)}
        if isinstance(node, Mapping):
            return {str(k): walk(v, f"{path}/{k}" if path else str(k)) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(v, f"{path}/{i}" if path else str(i)) for i, v in enumerate(node)]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"cannot store {type(node).__name__} at {path!r} in a checkpoint (JSON/tensors only)")

    return walk(state, prefix), tensors


def unflatten_state(structure: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state` (tuples come back as lists)."""
    if isinstance(structure, dict):
        if TENSOR_TAG in structure:
            return tensors[structure[TENSOR_TAG]]
        if NDARRAY_TAG in structure:
            return tensors[structure[NDARRAY_TAG]].numpy().astype(structure["dtype"])
        return {k: unflatten_state(v, tensors) for k, v in structure.items()}
    if isinstance(structure, list):
        return [unflatten_state(v, tensors) for v in structure]
    return structure


def _write_state(folder: Path, name: str, state: Any) -> None:
    structure, tensors = flatten_state(state)
    if tensors:
        save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(structure) + "\n", encoding="utf-8")


def _read_state(folder: Path, name: str) -> Any:
    json_path = folder / f"{name}.json"
    if not json_path.is_file():
        raise FileNotFoundError(f"checkpoint {folder} has no {json_path.name}")
    tensor_path = folder / f"{name}.safetensors"
    tensors = load_file(str(tensor_path)) if tensor_path.is_file() else {}
    return unflatten_state(json.loads(json_path.read_text(encoding="utf-8")), tensors)


def fsync_tree(folder: Path) -> None:
    """Flush the files under ``folder`` to disk so a rename publishes complete data even after a power loss."""
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())


# ---- RNG --------------------------------------------------------------------------------------------


class RNGState:
    """The Python, numpy, torch CPU and CUDA generator states of this process, as a Stateful piece."""

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = random.getstate()
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": {"version": version, "internal": list(internal), "gauss": gauss},
            "numpy": {"name": name, "keys": keys, "pos": pos, "has_gauss": has_gauss, "cached": cached},
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        python = state["python"]
        random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
        numpy = state["numpy"]
        np.random.set_state(
            (numpy["name"], numpy["keys"].astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["cached"])
        )
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class ValueState:
    """A plain dict of JSON values (step, counters) as a Stateful piece."""

    def __init__(self, **values: Any) -> None:
        self.values = dict(values)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.values.update(state)


# ---- the manager ------------------------------------------------------------------------------------


class CheckpointManager:
    """Saves and restores named Stateful pieces under ``directory``, keeping the newest ``keep_last``.

    Args:
        directory: The checkpoints folder (``{output_dir}/checkpoints``).
        keep_last: How many complete checkpoints to keep.
        process_index: This process's rank.
        barrier: Waits for every process (``accelerator.wait_for_everyone``).
    """

    def __init__(self, directory: str | Path, keep_last: int, process_index: int, barrier: Any) -> None:
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.process_index = process_index
        self.barrier = barrier

    @property
    def is_main(self) -> bool:
        return self.process_index == 0

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)]
        return sorted(found, key=lambda p: p.name)

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or ``None``."""
        found = self.checkpoints()
        return found[-1] if found else None

    def save(self, step: int, shared: Mapping[str, Stateful], per_process: Mapping[str, Stateful]) -> Path:
        """Write one checkpoint. Every process must call it (``state_dict`` may be collective).

        Args:
            step: The optimizer step the states are at.
            shared: Pieces equal on every process; written by the main process.
            per_process: Pieces of each process (RNG); each writes its own ``{name}.rank{r}`` files.

        Returns:
            The checkpoint folder.
        """
        final = self.directory / f"step_{step:08d}"
        tmp = self.directory / f"{TMP_PREFIX}{final.name}"
        # Collective state_dict calls (FSDP gathers) run on every process, in the same order.
        shared_states = {name: piece.state_dict() for name, piece in shared.items()}
        if self.is_main:
            self.directory.mkdir(parents=True, exist_ok=True)
            for stale in self.directory.glob(f"{TMP_PREFIX}*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        self.barrier()
        if self.is_main:
            for name, state in shared_states.items():
                _write_state(tmp, name, state)
        for name, piece in per_process.items():
            _write_state(tmp, f"{name}.rank{self.process_index}", piece.state_dict())
        self.barrier()
        if self.is_main:
            fsync_tree(tmp)
            if final.exists():  # the same step saved again (a resumed run that saved before dying)
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in self.checkpoints()[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
            logger.info("saved checkpoint %s", final)
        self.barrier()
        return final

    def load(self, folder: Path, shared: Mapping[str, Stateful], per_process: Mapping[str, Stateful]) -> None:
        """Restore every piece from ``folder`` (each process reads the files it needs)."""
        for name, piece in shared.items():
            piece.load_state_dict(_read_state(folder, name))
        for name, piece in per_process.items():
            rank_name = f"{name}.rank{self.process_index}"
            if not (folder / f"{rank_name}.json").is_file():
                raise ValueError(
                    f"checkpoint {folder} has no {rank_name}.json: it was written by fewer processes; resume "
                    "with the same number of processes"
                )
            piece.load_state_dict(_read_state(folder, rank_name))
        logger.info("resumed from checkpoint %s", folder)
