"""``thinkgen train``: run a training recipe (DiT stages 1-3, the nano MLLM and codec, or the SepGRPO stages)
with overrides."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from thinkgen.train.config import CodecConfig, MLLMSFTConfig, SFTStageConfig, load_recipe
from thinkgen.train.data import build_sources

logger = logging.getLogger(__name__)

REQUIRED_FIELDS = {SFTStageConfig: ("instruction", "output_image"), MLLMSFTConfig: ("instruction", "answer")}


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train`` on the top-level subcommands."""
    parser = subparsers.add_parser(
        "train",
        help="train from a recipe (DiT stages 1-3, nano MLLM and codec, SepGRPO stages 4-5)",
        description=(
            "Run the training recipe FILE; a run resumes from its newest checkpoint. Multi-process: "
            "torchrun --nproc_per_node N -m thinkgen.cli train --recipe FILE (or accelerate launch). "
            "Examples: thinkgen train --recipe recipes/nano/stage2_dit.toml --set run.max_steps=100; "
            "thinkgen train --recipe recipes/nano/sepgrpo.toml"
        ),
    )
    parser.add_argument("--recipe", type=Path, required=True, help="the TOML recipe")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set optim.lr=1e-4 (repeatable; values in TOML syntax)",
    )
    parser.add_argument(
        "--validate", action="store_true", help="check the recipe and its data files, then exit without training"
    )
    parser.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    config = load_recipe(args.recipe, args.overrides)
    if isinstance(config, (SFTStageConfig, MLLMSFTConfig)):
        return _run_supervised(args, config)
    if isinstance(config, CodecConfig):
        return _run_codec(args, config)
    from thinkgen.rl.config import DiTGRPOConfig, MLLMGRPOConfig

    if args.validate:
        from thinkgen.rl.common import PromptSource

        single = isinstance(config, (MLLMGRPOConfig, DiTGRPOConfig))
        stages = [config] if single else [config.mllm_grpo, config.dit_grpo]
        for stage in stages:  # the first prompt of each stage's stream loads (files, images, specs)
            PromptSource(stage.prompts).get(0)
        logger.info("%s is valid: %s", args.recipe, type(config).__name__)
        return 0
    if isinstance(config, MLLMGRPOConfig):
        from thinkgen.rl.mllm_grpo import train
    elif isinstance(config, DiTGRPOConfig):
        from thinkgen.rl.dit_grpo import train
    else:
        from thinkgen.rl.sepgrpo import train
    train(config)
    from thinkgen.train.distributed import end_processes

    end_processes()
    return 0


def _run_supervised(args: argparse.Namespace, config: SFTStageConfig | MLLMSFTConfig) -> int:
    if args.validate:
        sources = build_sources(config.data, config.run.seed, REQUIRED_FIELDS[type(config)])
        logger.info("%s is valid: %s; sources: %s", args.recipe, type(config).__name__,
                    ", ".join(f"{s.name} (weight {c.weight})" for s, c in zip(sources, config.data.sources)))
        return 0
    if isinstance(config, SFTStageConfig):
        from thinkgen.train.sft import train
    else:
        from thinkgen.train.mllm_sft import train
    train(config)
    from thinkgen.train.distributed import end_processes

    end_processes()
    return 0


def _run_codec(args: argparse.Namespace, config: CodecConfig) -> int:
    if args.validate:  # nothing to read: the recipe is checked and the world images are made on the fly
        logger.info("%s is valid: %s; world %s, scenarios %s", args.recipe, type(config).__name__,
                    config.model.preset, ", ".join(config.data.scenarios))
        return 0
    from thinkgen.train.codec import train

    train(config)
    return 0
