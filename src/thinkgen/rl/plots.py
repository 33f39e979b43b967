"""Reward and KL curves of an RL run as one PNG (``curves.png`` beside ``metrics.jsonl``).

matplotlib is optional: without it the curves stay in ``metrics.jsonl`` and TensorBoard only.
"""

from __future__ import annotations

import logging
from pathlib import Path

from thinkgen.train.logs import read_metrics

logger = logging.getLogger(__name__)

CURVES_FILE = "curves.png"


def save_curves(output_dir: str | Path) -> Path | None:
    """Plot the mean reward (overall and per scenario, held-out too when evaluated), the KL and the clip
    fraction of a run against its step; returns the PNG's path, or ``None`` without matplotlib or metrics."""
    records = read_metrics(output_dir)
    if not records:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: files only
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed; the reward curves are in %s/metrics.jsonl", output_dir)
        return None
    reward_keys = {k for r in records for k in r if k.split("/")[0] in ("reward", "eval_reward")}
    panels = [
        ("reward", sorted(reward_keys)),
        ("KL to the reference", ["kl"]),
        ("clip fraction", ["clip_frac"]),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for axis, (title, keys) in zip(axes, panels):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                axis.plot(*zip(*points), label=key, marker="." if len(points) < 30 else None)
        axis.set_title(title)
        axis.set_xlabel("step")
        if len(keys) > 1:
            axis.legend(fontsize="small")
    figure.tight_layout()
    path = Path(output_dir) / CURVES_FILE
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
