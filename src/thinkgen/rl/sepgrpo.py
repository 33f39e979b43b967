"""SepGRPO (ThinkGen Sec. 3.3): MLLM-GRPO with the DiT frozen, then DiT-GRPO with the MLLM frozen.

Separating the two keeps each stage's credit assignment clean: in stage 4 the DiT is fixed and every
rollout of a group starts from the same noise, so reward differences come from the MLLM's text; in stage 5
the MLLM's conditioning is fixed, so they come from the DiT's sampling. One recipe drives both; with
``schedule.num_rounds > 1`` the stages alternate, each starting from the pipeline the previous one
exported: its ``{stage output_dir}/final``, or, when that stage has ``eval.keep_best``, its ``best`` (the
highest held-out reward of its run, the start included: a stage that never beat its start hands the start
on; ``final`` still if no evaluation exported one, as in a run resumed from before step-0 evaluations),
looked up when the next stage starts.

Commands:

    thinkgen train --recipe recipes/nano/sepgrpo.toml                                 # CPU, nano
    accelerate launch --num_processes 8 -m thinkgen.cli train --recipe recipes/full/sepgrpo.toml

Layout of a run: ``{schedule.output_dir}/round{r}/stage4_mllm_grpo`` and ``…/stage5_dit_grpo``, each a
complete stage run (checkpoints, ``metrics.jsonl``, ``final/``, with ``eval.keep_best`` ``best/``). A stage
whose ``final/`` exists is done and skipped, so a killed SepGRPO run resumes where it stopped with the same
command.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from thinkgen.pipeline import MODEL_INDEX
from thinkgen.rl import dit_grpo, mllm_grpo
from thinkgen.rl.common import BEST_DIR
from thinkgen.rl.config import DiTGRPOConfig, MLLMGRPOConfig, SepGRPOConfig

logger = logging.getLogger(__name__)

STAGE4_DIR = "stage4_mllm_grpo"
STAGE5_DIR = "stage5_dit_grpo"


@dataclass
class SepGRPOResult:
    """What :func:`train` returns: the pipeline folder each stage run hands on (:func:`handed_on`), in order,
    and the per-step mean rewards of the stages this call ran (by stage folder)."""

    handed_on: list[Path] = field(default_factory=list)
    rewards: dict[str, list[float]] = field(default_factory=dict)


def stage_configs(config: SepGRPOConfig) -> list[MLLMGRPOConfig | DiTGRPOConfig]:
    """The stage runs of the schedule, in order, each with its output folder and starting pipeline set (after
    the first, the previous stage's ``final``; :func:`train` replaces it by :func:`handed_on` once known)."""
    root = Path(config.schedule.output_dir)
    stages: list[MLLMGRPOConfig | DiTGRPOConfig] = []
    start = config.mllm_grpo.model.pipeline
    for r in range(config.schedule.num_rounds):
        for stage, name in ((config.mllm_grpo, STAGE4_DIR), (config.dit_grpo, STAGE5_DIR)):
            output_dir = root / f"round{r}" / name
            stages.append(dataclasses.replace(
                stage,
                run=dataclasses.replace(stage.run, output_dir=str(output_dir)),
                model=dataclasses.replace(stage.model, pipeline=start),
            ))
            start = str(output_dir / "final")
    return stages


def handed_on(stage: MLLMGRPOConfig | DiTGRPOConfig) -> Path:
    """The pipeline folder a finished stage hands on: its ``best`` with ``eval.keep_best`` when an evaluation
    exported one, else its ``final``."""
    best = Path(stage.run.output_dir) / BEST_DIR
    if stage.eval.keep_best and (best / MODEL_INDEX).is_file():
        return best
    return Path(stage.run.output_dir) / "final"


def train(config: SepGRPOConfig) -> SepGRPOResult:
    """Run (or resume) the SepGRPO schedule. See the module docstring for the commands.

    Example:
        >>> from thinkgen.train.config import load_recipe
        >>> result = train(load_recipe("recipes/nano/sepgrpo.toml"))
        >>> result.handed_on[-1]  # the SepGRPO-trained pipeline
    """
    result = SepGRPOResult()
    for stage in stage_configs(config):
        if result.handed_on:  # known only now that the previous stage has run
            start = str(result.handed_on[-1])
            stage = dataclasses.replace(stage, model=dataclasses.replace(stage.model, pipeline=start))
        final = Path(stage.run.output_dir) / "final"
        if (final / MODEL_INDEX).is_file():
            logger.info("%s is done; skipping it", stage.run.output_dir)
        else:
            logger.info("SepGRPO: %s from %s", stage.run.output_dir, stage.model.pipeline)
            runner = mllm_grpo.train if isinstance(stage, MLLMGRPOConfig) else dit_grpo.train
            result.rewards[stage.run.output_dir] = runner(stage).rewards
        result.handed_on.append(handed_on(stage))
    return result
