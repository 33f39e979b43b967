"""The nano MLLM trainer's loader: samples/s with items handed over as torch tensors vs numpy arrays.

A DataLoader worker hands each torch tensor to the main process as a shared-memory handle of its own
(a file descriptor, a mapping, a refcount), while a numpy array travels inside the pickle. An MLLM item
holds 3 to 5 small tensors (ids, labels, token types, and for samples with images the patches and their
grid), so a batch of 32 is a hundred or more handles. This measures the loader of ``recipes/nano/mllm.toml``
(the world source, ``mllm_sft.encode_sample`` with the shipped nano processor) both ways, in one run.

    python benchmarks/mllm_sft_input_pipeline.py [--batch 32] [--workers 0 1 2] [--batches 16]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from thinkgen.models.mllm import SYSTEM_PROMPT, Qwen3VLImageProcessor
from thinkgen.train import run as R
from thinkgen.train.config import load_recipe
from thinkgen.train.data import Record, build_sources
from thinkgen.train.mllm_sft import encode_sample, loader_item

ROOT = Path(__file__).resolve().parent.parent
PROCESSOR = ROOT / "src/thinkgen/assets/thinkgen-nano/processor"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_recipe(ROOT / "recipes/nano/mllm.toml", [
        f"data.global_batch_size={args.batch}", f"data.micro_batch_size={args.batch}",
    ])
    data = config.data
    processor = Qwen3VLImageProcessor.from_pretrained(PROCESSOR)
    max_len = config.train.max_seq_len

    def as_tensors(record: Record) -> dict[str, Any]:
        return encode_sample(processor, record, SYSTEM_PROMPT, max_len)

    def as_arrays(record: Record) -> dict[str, Any]:
        return loader_item(encode_sample(processor, record, SYSTEM_PROMPT, max_len))

    def rate(workers: int, transform: Any) -> float:
        data.num_workers = workers
        sources = build_sources(data, 0, required=("instruction", "answer"))
        _, start = R.make_batches(Accelerator(cpu=True), data, sources, 0, lambda s, i: "all", transform, False)
        iterator, _ = start()
        for _ in range(2):
            next(iterator)
        begin = time.perf_counter()
        for _ in range(args.batches):
            next(iterator)
        return args.batches * args.batch / (time.perf_counter() - begin)

    print(f"MLLM loader, batch {args.batch}, world preset nano, all scenarios (samples/s)")
    for workers in args.workers:
        tensors, arrays = rate(workers, as_tensors), rate(workers, as_arrays)
        print(f"  workers={workers}: items as tensors {tensors:7.0f}   as numpy arrays {arrays:7.0f}   "
              f"ratio {arrays / tensors:5.2f}")


if __name__ == "__main__":
    main()
