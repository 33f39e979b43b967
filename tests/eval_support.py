"""Helpers of the eval tests: a stub judge server, the tiny pipeline, fixture paths, CLI arguments."""

from __future__ import annotations

import argparse
import functools
import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures" / "bench"
REAL_BENCHMARKS = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"

# A reply is an answer text (HTTP 200 chat completion) or (status, body).
Reply = str | tuple[int, str]


class StubJudge:
    """An OpenAI-compatible chat endpoint in a thread that answers through ``respond(text, num_images)``.

    Records every request's prompt text and image count in ``requests``.
    """

    def __init__(self, respond: Callable[[str, int], Reply]) -> None:
        self.respond = respond
        self.requests: list[tuple[str, int]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                parts = body["messages"][-1]["content"]
                text = "".join(p["text"] for p in parts if p["type"] == "text")
                images = [p for p in parts if p["type"] == "image_url"]
                assert all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in images)
                stub.requests.append((text, len(images)))
                reply = stub.respond(text, len(images))
                status, payload = (reply if isinstance(reply, tuple) else
                                   (200, json.dumps({"choices": [{"message": {"role": "assistant",
                                                                              "content": reply}}]})))
                data = payload.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> StubJudge:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def sensible_judge(text: str, num_images: int) -> str:
    """Answers like a judge for every judged benchmark's prompt: the score names it asks for, or yes/no."""
    numbered = re.findall(r"(?m)^(\d+): (.*)$", text)
    if numbered:  # DPG: "no" to questions about blue, "yes" otherwise
        return "\n".join(f"{n}: {'no' if 'blue' in q else 'yes'}" for n, q in numbered)
    if "Aesthetic Quality" in text:  # WISE
        return "Looks right.\nConsistency: 2\nRealism: 1\nAesthetic Quality: 1"
    if "Reasoning:" in text:  # RISEBench: full marks unless plausibility is asked
        lines = ["Reasoning: 5", "Consistency: 5"] + (["Plausibility: 4"] if "Plausibility:" in text else [])
        return "Fine.\n" + "\n".join(lines)
    labels = re.findall(r"(?m)^([^\n:]+): A number from 1 to 5", text)  # ImgEdit
    return "Brief reasoning: ok.\n" + "\n".join(f"{label}: {3 + i}" for i, label in enumerate(labels))


@functools.lru_cache(maxsize=1)
def tiny_pipeline():
    """The tiny random pipeline (built once per test session): 16×16 images, 2 steps."""
    from tiny_pipeline import build_tiny_pipeline

    return build_tiny_pipeline(num_inference_steps=2)


def save_tiny_clip(folder: Path) -> Path:
    """A tiny random CLIP (``CLIPModel`` + ``CLIPProcessor``) saved to ``folder``, built offline.

    The tokenizer is CLIP's BPE over a vocabulary of single bytes (with and without CLIP's ``</w>`` word
    end) and no merges, so any text tokenizes; images are resized and centre-cropped to 32×32.
    """
    import torch
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    files = folder / "tokenizer_files"
    files.mkdir(parents=True)
    (files / "vocab.json").write_text(json.dumps(vocab))
    (files / "merges.txt").write_text("#version: 0.2\n")
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=CLIPTokenizer.from_pretrained(files),
    )
    end = vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77,
                     "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": end, "pad_token_id": end},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(0)
    model_dir = folder / "clip"
    CLIPModel(config).save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    return model_dir


def eval_args(bench: str, out: Path, **overrides: Any) -> argparse.Namespace:
    """Parsed ``thinkgen eval BENCH`` arguments with small settings for the tiny pipeline."""
    from thinkgen.cli import _build_parser

    argv = ["eval", bench, "--out", str(out), "--max-thinking-tokens", "4", "--max-instruction-tokens", "3",
            "--batch-size", "2", "--judge-retry-wait", "0"]
    args = _build_parser().parse_args(argv + overrides.pop("extra", []))
    for k, v in overrides.items():
        setattr(args, k, v)
    return args
