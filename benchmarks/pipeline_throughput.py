"""Images per second of the whole pipeline (MLLM no-think encode + DiT sampling + decode) at batch 1, 4, 16.

A tiny random model on the CPU, so the numbers measure the pipeline's overheads and batching, not a
trained model. Each batch size is reported as images/s and as a ratio to batch 1, in one run.

    python benchmarks/pipeline_throughput.py [--steps 10] [--size 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from thinkgen.models.dit import ThinkGenTransformer2DModel
from thinkgen.models.tiny import build_tiny_mllm
from thinkgen.models.vae import PixelCodec
from thinkgen.pipeline import PipelineConfig, ThinkGenPipeline

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--size", type=int, default=64, help="output side in pixels (pixel codec, patch 4)")
parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
parser.add_argument("--repeats", type=int, default=2)
parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

torch.manual_seed(0)
mllm = build_tiny_mllm()
dit = ThinkGenTransformer2DModel(
    patch_size=4, in_channels=3, hidden_size=128, num_layers=4, num_refiner_layers=1, num_attention_heads=4,
    num_kv_heads=2, multiple_of=32, axes_dim_rope=(8, 12, 12), axes_lens=(1024, 1024, 1024),
    text_feat_dim=mllm.hidden_size, num_prepad_states=8,
).eval()
pipe = ThinkGenPipeline(mllm, dit, PixelCodec(), PipelineConfig(height=args.size, width=args.size))
prompts = ["two red circles left of a blue square", "one yellow star", "the word 'jazz' above a cross"]

pipe(prompts[0], num_inference_steps=2, seed=0)  # warm-up
rows = []
for batch in args.batches:
    batch_prompts = [prompts[i % len(prompts)] for i in range(batch)]
    best = float("inf")
    for r in range(args.repeats):
        start = time.perf_counter()
        out = pipe(batch_prompts, num_inference_steps=args.steps, seed=r)
        best = min(best, time.perf_counter() - start)
    rows.append((batch, batch / best, out.timings))

base = rows[0][1]
print(f"tiny pipeline, {args.size}x{args.size}, {args.steps} steps, text CFG, {torch.get_num_threads()} threads")
print(f"{'batch':>5} {'images/s':>9} {'vs batch 1':>10}   last-run split (s)")
for batch, ips, t in rows:
    split = " ".join(f"{k} {v:.3f}" for k, v in t.items())
    print(f"{batch:>5} {ips:>9.2f} {ips / base:>9.2f}x   {split}")
