"""The one place where models meet processes: the accelerator, model wrapping, and distributed-safe states.

Models in ``thinkgen.models`` import nothing distributed; they only declare what the wrapping needs
(``_no_split_modules``, ``_supports_gradient_checkpointing``). Here:

- :func:`build_accelerator` makes the ``Accelerator`` (one process, DDP under ``accelerate launch`` /
  ``torchrun``, or FSDP2) with mixed precision and gradient accumulation;
- :func:`wrap_model` applies, in a fixed order, gradient checkpointing, the optimizer and then
  ``accelerator.prepare`` of both together (DDP, or FSDP2 with one shard unit per class named in
  ``_no_split_modules``, which swaps the optimizer's parameters for the sharded ones);
- :class:`TrainableWeights` and :class:`OptimizerState` are the checkpoint pieces of the wrapped model and
  its optimizer. They go through ``torch.distributed.checkpoint.state_dict``, which returns *full*
  (unsharded) tensors keyed by parameter name whatever the wrapping, so a checkpoint written under FSDP
  reads back the same as one written by a single process.
"""

from __future__ import annotations

import gc
import os
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from thinkgen.train.config import OptimConfig
from thinkgen.train.optim import build_optimizer

# Frozen parameters come from the model's own source (a pretrained folder or a seeded init), so the
# checkpoint holds only what training changes.
_SAVE_OPTIONS = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
_LOAD_OPTIONS = StateDictOptions(full_state_dict=True, strict=False)


def build_accelerator(
    strategy: str,
    mixed_precision: str,
    global_batch_size: int,
    micro_batch_size: int,
    no_split_modules: list[str],
    find_unused_parameters: bool,
) -> Accelerator:
    """The run's ``Accelerator``, accumulating gradients over ``global / (micro · processes)`` micro-batches.

    Args:
        strategy: ``auto`` (DDP when launched on several processes) or ``fsdp`` (FSDP2).
        mixed_precision: ``no``, ``bf16`` or ``fp16`` (autocast around the wrapped model's forward).
        global_batch_size: Samples per optimizer step over all processes.
        micro_batch_size: Samples per forward on one process; ``accelerator.accumulate`` skips the
            gradient all-reduce on all micro-batches of a step but the last.
        no_split_modules: Classes that FSDP keeps whole, one shard unit each (the model's
            ``_no_split_modules``).
        find_unused_parameters: Let DDP accept parameters without a gradient in a step (the DiT's
            reference refiner on a batch without edits).
    """
    _check_launcher(strategy)
    # The process group comes up here (from the launcher's environment), before any model is built.
    processes = PartialState(cpu=not torch.cuda.is_available()).num_processes
    if global_batch_size % (micro_batch_size * processes):
        raise ValueError(
            f"data.global_batch_size ({global_batch_size}) must be a multiple of data.micro_batch_size × "
            f"processes ({micro_batch_size} × {processes})"
        )
    fsdp_plugin = None
    if strategy == "fsdp":
        fsdp_plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2,
            auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=list(no_split_modules),
            reshard_after_forward=True,
            state_dict_type="FULL_STATE_DICT",
        )
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=global_batch_size // (micro_batch_size * processes),
        cpu=not torch.cuda.is_available(),
        fsdp_plugin=fsdp_plugin,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
    )
    if fsdp_plugin is not None and accelerator.distributed_type == DistributedType.MULTI_CPU:
        # accelerate turns FSDP on for accelerator devices only and would silently run DDP here; torch's
        # FSDP2 shards over gloo on CPU processes as well, so they take the same sharded path as GPUs.
        if mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(mixed_precision)
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = fsdp_plugin
    return accelerator


def _check_launcher(strategy: str) -> None:
    """Refuse an ``accelerate launch`` configuration with DeepSpeed before anything is built.

    accelerate reads DeepSpeed from the launcher's environment and would wrap the model with it whatever
    the recipe says. thinkgen does not train with DeepSpeed: its checkpoints are pickled (its loader
    unpickles them), and the run's own safetensors checkpoints cannot read its partitioned optimizer.
    FSDP2 (``distributed.strategy = "fsdp"``) shards parameters, gradients and optimizer state instead.
    """
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise ValueError(
            "the launcher asks for DeepSpeed (ACCELERATE_USE_DEEPSPEED, set by `accelerate launch` with a "
            "DeepSpeed config or --use_deepspeed), which thinkgen does not train with; to shard the model, set "
            f"distributed.strategy = \"fsdp\" in the recipe (now {strategy!r}) and launch with torchrun or "
            "`accelerate launch --multi_gpu`"
        )


def end_processes() -> None:
    """Leave the process group together, after training returned on every process.

    The wrapped model and the accelerator hold the process group; collecting them first lets gloo join its
    worker threads now rather than during interpreter shutdown, where a still-running worker aborts the
    process. The barrier keeps a rank from closing its sockets while another still talks to it.
    """
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap_model(
    accelerator: Accelerator, model: torch.nn.Module, gradient_checkpointing: bool, optim: OptimConfig
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Make ``model`` and its optimizer ready to train on this accelerator: checkpointing first, then the
    optimizer, then DDP / FSDP wrapping of both together (FSDP2 replaces the parameters by shards, and the
    optimizer must hold those).

    Args:
        accelerator: From :func:`build_accelerator`.
        model: A diffusers or transformers model (or a peft model around one), trainable parameters set.
        gradient_checkpointing: Recompute block activations in the backward pass.
        optim: The AdamW settings (:func:`thinkgen.train.optim.build_optimizer`).

    Returns:
        The wrapped model (call ``accelerator.unwrap_model`` to reach the module itself) and its optimizer.
    """
    if gradient_checkpointing:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if hasattr(base, "enable_gradient_checkpointing"):  # diffusers
            base.enable_gradient_checkpointing()
        else:  # transformers
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if accelerator.distributed_type == DistributedType.FSDP:
        for module in model.modules():
            if hasattr(module, "run_all_blocks"):  # blocks that run only for some inputs (the DiT's references)
                module.run_all_blocks = True
    return accelerator.prepare(model, build_optimizer(model, optim))


class TrainableWeights:
    """Checkpoint piece: the trainable parameters of a wrapped model, full tensors keyed by name."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, Any]:
        return get_model_state_dict(self.model, options=_SAVE_OPTIONS)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = set(get_model_state_dict(self.model, options=StateDictOptions(ignore_frozen_params=True)))
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(
                f"the checkpoint's trainable weights do not match the model: missing {missing[:5]}, "
                f"unexpected {extra[:5]}; resume with the recipe that wrote it"
            )
        set_model_state_dict(self.model, state, options=_LOAD_OPTIONS)


class OptimizerState:
    """Checkpoint piece: optimizer state (moments, step, param groups) keyed by parameter name."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        # accelerate's wrapper delegates; the torch optimizer itself is what the state-dict API reads.
        self.optimizer = getattr(optimizer, "optimizer", optimizer)

    def state_dict(self) -> dict[str, Any]:
        return get_optimizer_state_dict(self.model, self.optimizer, options=_SAVE_OPTIONS)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_optimizer_state_dict(self.model, self.optimizer, state, options=_LOAD_OPTIONS)
