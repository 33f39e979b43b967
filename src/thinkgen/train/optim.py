"""AdamW with decay on matrices only, and the warm-up + decay LR schedule shared by every trainer."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from thinkgen.train.config import OptimConfig


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model``.

    Weight decay applies to the weights of linear layers only: decaying norms' scales, biases, learned
    embeddings (``prepad_embed``, ``image_index_embedding``, token embeddings) only pulls them to zero.
    """
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters; check the stage / LoRA settings")
    decay = [p for p in trainable if id(p) in linear_weights]
    no_decay = [p for p in trainable if id(p) not in linear_weights]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=config.lr, betas=tuple(config.betas), eps=config.eps
    )


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, max_steps: int) -> LambdaLR:
    """Linear warm-up over ``warmup_steps``, then ``constant``, ``linear`` or ``cosine`` decay to
    ``min_lr_ratio · lr`` at ``max_steps``. Stepped once per optimizer step."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - config.warmup_steps) / max(1, max_steps - config.warmup_steps))
        if config.schedule == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * shape

    return LambdaLR(optimizer, factor)
