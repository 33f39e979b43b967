"""The DiT trainer's input path: loader samples/s with images handed over as PIL vs as tensors, and
reference images encoded one codec call per image vs one call per size.

On an H100 the nano stage 2 ran at ~400 samples/s with the GPU mostly idle: the main process spent its
time receiving items and launching small kernels. This measures those costs on the CPU, in one run:

1. the loader (the world source and ``sft.training_item`` of ``recipes/nano/stage2_dit.toml``) with
   ``--workers`` processes, items carrying PIL images (what the trainer does) vs the same items with every
   image turned into a tensor in the worker (what it did before: one shared-memory handle per tensor);
   with 0 workers the main process makes the items itself (generation cost alone);
2. the references of one batch encoded by the nano codec one image per call vs ``sft.encode_references``.

    python benchmarks/sft_input_pipeline.py [--batch 256] [--workers 0 1 2] [--batches 8]
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from thinkgen.imageio import pil_to_tensor
from thinkgen.models.vae import load_codec
from thinkgen.train import run as R
from thinkgen.train.config import load_recipe
from thinkgen.train.data import Record, Source, build_sources, fitted_size
from thinkgen.train.sft import encode_references, training_item

ROOT = Path(__file__).resolve().parent.parent
CODEC = ROOT / "src/thinkgen/assets/thinkgen-nano/vae"


def tensor_item(record: Record, data: Any) -> dict[str, Any]:
    """The item with its images as tensors made in the worker, as the trainer used to hand them over."""
    item = training_item(record, data)
    return {**item, "target": pil_to_tensor([item["target"]])[0], "refs": [pil_to_tensor([r])[0] for r in item["refs"]]}


def loader_rate(data: Any, workers: int, transform: Any, batches: int) -> float:
    """Samples/s of the trainer's loader after two warm-up batches."""
    data.num_workers = workers
    sources = build_sources(data, 0, required=("instruction", "output_image"))

    def bucket_of(source: Source, index: int) -> str:
        return "x".join(map(str, fitted_size(*source.image_size(index), data.max_image_pixels, data.size_multiple)))

    _, start = R.make_batches(Accelerator(cpu=True), data, sources, 0, bucket_of,
                              functools.partial(transform, data=data), True)
    iterator, _ = start()
    for _ in range(2):
        next(iterator)
    begin = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * data.micro_batch_size / (time.perf_counter() - begin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_recipe(ROOT / "recipes/nano/stage2_dit.toml", [
        f"data.global_batch_size={args.batch}", f"data.micro_batch_size={args.batch}",
    ])
    data = config.data

    print(f"loader, batch {args.batch}, world preset nano, all scenarios (samples/s)")
    for workers in args.workers:
        pil = loader_rate(data, workers, training_item, args.batches)
        tensors = loader_rate(data, workers, tensor_item, args.batches)
        print(f"  workers={workers}: images as PIL {pil:7.0f}   as tensors {tensors:7.0f}   ratio {pil / tensors:5.2f}")

    data.num_workers = 0
    sources = build_sources(data, 0, required=("instruction", "output_image"))
    records = [sources[0].load(i, True) for i in range(args.batch)]
    refs = [training_item(r, data)["refs"] for r in records]
    codec = load_codec(str(CODEC))
    device = torch.device("cpu")

    def one_by_one() -> None:
        with torch.no_grad():
            [[codec.encode(pil_to_tensor([image]).to(device)) for image in images] for images in refs]

    def timed(fn: Any) -> float:
        fn()
        begin = time.perf_counter()
        fn()
        return time.perf_counter() - begin

    single = timed(one_by_one)
    batched = timed(lambda: encode_references(refs, codec, device))
    count = sum(len(images) for images in refs)
    print(f"references of one batch ({count} images), nano codec on the CPU: one call each {single * 1e3:.0f} ms, "
          f"one call per size {batched * 1e3:.0f} ms, ratio {single / batched:.2f}")


if __name__ == "__main__":
    main()
