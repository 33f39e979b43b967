"""Run metrics: one JSON line per logged step (``metrics.jsonl``), TensorBoard when installed, log lines.

Only the main process writes. On resume the lines past the checkpoint's step (written by the run that
died after it) are dropped first, so the file reads as if the run had never stopped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from thinkgen.imageio import atomic_write_bytes

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    """The metric lines of a run, in order."""
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    # A run killed mid-write may leave a partial last line; it is not a record.
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsLogger:
    """Writes metrics of the main process.

    Args:
        output_dir: The run folder.
        is_main: Whether this is the main process (others write nothing).
        use_tensorboard: Also write TensorBoard events under ``output_dir/tensorboard`` if installed.
        resume_step: The step a resumed run starts from; later lines are dropped. 0 for a fresh run.
    """

    def __init__(self, output_dir: str | Path, is_main: bool, use_tensorboard: bool, resume_step: int) -> None:
        self.is_main = is_main
        self.path = Path(output_dir) / METRICS_FILE
        self.writer = None
        if not is_main:
            return
        kept = [r for r in read_metrics(output_dir) if r.get("step", 0) <= resume_step] if resume_step else []
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        if use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.info("tensorboard is not installed; metrics go to %s only", self.path)
            else:
                self.writer = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=resume_step + 1)

    def log(self, step: int, metrics: dict[str, float | int]) -> None:
        """Record ``metrics`` at ``step`` (main process only)."""
        if not self.is_main:
            return
        record = {"step": step, **metrics}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(f"train/{name}", value, step)
        logger.info("step %d %s", step, " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _fmt(value: float | int) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
