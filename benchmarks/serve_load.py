"""Load test of ``thinkgen serve``: N concurrent clients against a live server on loopback.

Starts ``thinkgen serve`` in a subprocess on a model folder (by default a tiny random model written to a
temporary folder, so the numbers measure the server's queueing and batching, not a trained model), then:

1. a sequential baseline: one client, one request at a time, for ``--duration`` seconds;
2. the load: ``--clients`` concurrent clients, each sending requests back to back for ``--duration`` seconds;
3. a check that every client got the image of its own prompt and seed: up to ``--verify`` answers are
   compared with a direct pipeline call with the same settings (pixels may differ by float rounding only).

It reports p50 / p95 latency, images per second against the baseline, errors by status, and the server's
batch sizes.

    python benchmarks/serve_load.py [--clients 8] [--duration 20] [--steps 4] [--size 32]
    python benchmarks/serve_load.py --model path/to/model --size 256 --steps 20
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from thinkgen.models.dit import ThinkGenTransformer2DModel
from thinkgen.models.tiny import build_tiny_mllm
from thinkgen.models.vae import PixelCodec
from thinkgen.pipeline import PipelineConfig, ThinkGenPipeline

PROMPTS = ("two red circles left of a blue square", "one yellow star", "three green triangles",
           "a big purple square above a small circle", "four orange stars in a row")
# Batched rows may differ from a single call by float rounding: one level of 255 at most.
PIXEL_TOLERANCE = 1
WARMUP_S = 2.0

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", type=Path, default=None, help="model folder (default: a tiny random model)")
parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
parser.add_argument("--duration", type=float, default=20.0, help="seconds of each phase")
parser.add_argument("--steps", type=int, default=4, help="denoising steps per request")
parser.add_argument("--size", type=int, default=32, help="image side in pixels")
parser.add_argument("--verify", type=int, default=24, help="answers to check against direct pipeline calls")
parser.add_argument("--max-batch-images", type=int, default=8, help="the server's batch limit")
parser.add_argument("--port", type=int, default=8765)
args = parser.parse_args()


@dataclass
class Answer:
    prompt: str
    seed: int
    latency_s: float
    status: int
    b64: str | None = None
    batch_size: int = 0


def tiny_model(folder: Path) -> Path:
    """A tiny random pipeline (the pipeline benchmark's DiT), saved for the server to load."""
    torch.manual_seed(0)
    mllm = build_tiny_mllm()
    dit = ThinkGenTransformer2DModel(
        patch_size=4, in_channels=3, hidden_size=128, num_layers=4, num_refiner_layers=1, num_attention_heads=4,
        num_kv_heads=2, multiple_of=32, axes_dim_rope=(8, 12, 12), axes_lens=(1024, 1024, 1024),
        text_feat_dim=mllm.hidden_size, num_prepad_states=8,
    ).eval()
    with torch.no_grad():  # randomise the zero-initialised output layers, so images depend on prompt and seed
        for p in dit.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    config = PipelineConfig(height=args.size, width=args.size, negative_prompt="blurry")
    ThinkGenPipeline(mllm, dit, PixelCodec(), config).save_pretrained(folder)
    return folder


def start_server(model: Path, url: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "thinkgen.cli", "serve", "--model", str(model), "--port", str(args.port),
               "--max-queue-size", str(4 * args.clients), "--max-batch-images", str(args.max_batch_images),
               "--max-output-pixels", str(args.size * args.size)]
    env = {k: v for k, v in os.environ.items() if k != "THINKGEN_API_KEY"}  # loopback, no key needed
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        try:
            if httpx.get(url + "/health").status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    server.terminate()
    raise SystemExit("the server did not come up in 120 s")


async def client_loop(http: httpx.AsyncClient, client_id: int, until: float, answers: list[Answer]) -> None:
    """One client: requests back to back until ``until``; every request has its own prompt and seed."""
    rng = random.Random(client_id)
    while time.monotonic() < until:
        prompt, seed = rng.choice(PROMPTS), rng.randrange(2**31)
        body = {"prompt": prompt, "seed": seed, "size": f"{args.size}x{args.size}", "num_inference_steps": args.steps}
        start = time.perf_counter()
        try:
            r = await http.post("/v1/images/generations", json=body)
        except httpx.TransportError:
            answers.append(Answer(prompt, seed, time.perf_counter() - start, 0))
            continue
        answer = Answer(prompt, seed, time.perf_counter() - start, r.status_code)
        if r.status_code == 200:
            answer.b64, answer.batch_size = r.json()["data"][0]["b64_json"], r.json()["batch_size"]
        elif r.status_code == 429:  # as a well-behaved client would: wait as told
            await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
        answers.append(answer)


async def phase(url: str, clients: int, duration_s: float) -> tuple[list[Answer], float]:
    """``clients`` clients for ``duration_s`` seconds: every answer, and the wall time until the last one."""
    answers: list[Answer] = []
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        start = time.monotonic()
        until = start + duration_s
        await asyncio.gather(*(client_loop(http, k, until, answers) for k in range(clients)))
        return answers, time.monotonic() - start


def summary(name: str, answers: list[Answer], wall_s: float) -> float:
    ok = [a for a in answers if a.status == 200]
    latencies = sorted(a.latency_s for a in ok)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else float("nan")
    throughput = len(ok) / wall_s
    errors = Counter(a.status for a in answers if a.status != 200)
    print(f"{name:>12}: {len(ok):4d} images in {wall_s:5.1f} s = {throughput:6.2f} images/s   "
          f"p50 {statistics.median(latencies) if latencies else float('nan'):.3f} s   p95 {p95:.3f} s   "
          f"errors {dict(errors) or 0}")
    return throughput


def verify(model: Path, answers: list[Answer]) -> int:
    """Compare answers with direct pipeline calls; the number of mismatches."""
    pipe = ThinkGenPipeline.from_pretrained(model)
    ok = [a for a in answers if a.status == 200]
    # Prefer answers that shared a batch: they are the ones batching could have mixed up.
    sample = sorted(ok, key=lambda a: -a.batch_size)[: args.verify]
    mismatches = 0
    for a in sample:
        served = np.asarray(Image.open(io.BytesIO(base64.b64decode(a.b64))).convert("RGB"), dtype=np.int16)
        direct = pipe(a.prompt, seed=a.seed, height=args.size, width=args.size, num_inference_steps=args.steps)
        diff = int(np.abs(served - np.asarray(direct.images[0], dtype=np.int16)).max())
        mismatches += diff > PIXEL_TOLERANCE
    batched = sum(a.batch_size > 1 for a in sample)
    print(f"verified {len(sample)} answers ({batched} from batches) against direct calls: {mismatches} mismatches")
    return mismatches


def main() -> int:
    url = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or tiny_model(Path(tmp) / "tiny")
        server = start_server(model, url)
        try:
            asyncio.run(phase(url, 1, WARMUP_S))  # first calls pay for lazy initialisation
            sequential, sequential_s = asyncio.run(phase(url, 1, args.duration))
            loaded, loaded_s = asyncio.run(phase(url, args.clients, args.duration))
            metrics = httpx.get(url + "/metrics", params={"format": "json"}).json()
        finally:
            server.terminate()
            server.wait(30)
        print(f"model {args.model or 'tiny random'}, {args.size}x{args.size}, {args.steps} steps, "
              f"{args.clients} clients, {args.duration:g} s per phase, {os.cpu_count()} CPUs")
        base = summary("sequential", sequential, sequential_s)
        load = summary(f"{args.clients} clients", loaded, loaded_s)
        print(f"throughput vs sequential: {load / base:.2f}x")
        print(f"server batch sizes (requests per call: calls): {metrics['batch_sizes']}   jobs: {metrics['jobs']}")
        mismatches = verify(model, sequential + loaded)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
