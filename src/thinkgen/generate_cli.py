"""``thinkgen generate | edit | reflect | understand``: the pipeline from the command line.

Every image is written as PNG with a JSON sidecar (prompt, reasoning, instruction, seed, settings,
timings); the MLLM's reasoning is streamed to stderr as it is generated.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import DTYPES
from .imageio import save_with_sidecar

logger = logging.getLogger(__name__)


def _stderr_streamer(tokenizer):
    """A streamer that writes the MLLM's text to stderr as it comes, so stdout stays for results."""
    from transformers import TextStreamer  # imported here: `thinkgen world …` should not pay for transformers

    class StderrStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            sys.stderr.write(text + ("\n" if stream_end else ""))
            sys.stderr.flush()

    return StderrStreamer(tokenizer, skip_prompt=True)


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="nano", help="model folder, or 'nano' for the shipped model (default)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="weight dtype (default: float32; bfloat16 for the full-size model on a GPU)")


def _add_sampling_args(parser: argparse.ArgumentParser, think_default: bool = False) -> None:
    parser.add_argument("--think", dest="think", action="store_const", const=True, default=think_default,
                        help="let the MLLM reason before drawing")
    parser.add_argument("--no-think", dest="think", action="store_const", const=False, help="draw at once")
    parser.add_argument("--auto-think", dest="think", action="store_const", const="auto",
                        help="let the MLLM decide whether to reason")
    parser.add_argument("-n", "--num-images", type=int, default=1, help="images per prompt (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed for noise and thinking (default: 0)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None, help="text guidance scale (default: the model's)")
    parser.add_argument("--image-guidance", type=float, default=None, help="image guidance scale")
    parser.add_argument("--size", type=int, nargs=2, metavar=("WIDTH", "HEIGHT"), default=None,
                        help="output size (default: the model's, or the input image's for edits)")
    parser.add_argument("--max-thinking-tokens", type=int, default=None, help="thinking budget in tokens")
    parser.add_argument("--no-glyphs", action="store_true",
                        help="no glyph reference of quoted text (or object or edit marks), for a model trained with "
                        "them (see thinkgen.glyphs)")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="output folder (default: outputs)")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``generate``, ``edit``, ``reflect`` and ``understand``."""
    p = commands.add_parser("generate", help="text to image (add --think for reasoning generation)",
                            description='Example: thinkgen generate "three blue triangles" --think -n 2')
    p.add_argument("prompt")
    _add_model_args(p)
    _add_sampling_args(p)
    p.set_defaults(handler=_run_generate)

    p = commands.add_parser("edit", help="edit an image (or combine up to 5) by an instruction",
                            description='Example: thinkgen edit scene.png "recolour the square red"')
    p.add_argument("image", type=Path, nargs="+", help="input image(s), at most 5")
    p.add_argument("prompt", help="the instruction")
    _add_model_args(p)
    _add_sampling_args(p)
    p.set_defaults(handler=_run_generate)

    p = commands.add_parser("reflect", help="generate, then critique and fix the image",
                            description='Example: thinkgen reflect "two red stars above a circle" --rounds 2')
    p.add_argument("prompt")
    p.add_argument("--rounds", type=int, default=2, help="reflection rounds after the first image (default: 2)")
    _add_model_args(p)
    _add_sampling_args(p)
    p.set_defaults(handler=_run_reflect)

    p = commands.add_parser("understand", help="ask the MLLM about images")
    p.add_argument("question")
    p.add_argument("--image", type=Path, action="append", default=[], help="an input image (repeatable)")
    _add_model_args(p)
    p.set_defaults(handler=_run_understand)


def _load(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """Check what can be checked without the model (a full-size model takes minutes to load), then load it.

    Returns:
        The pipeline, and the input images decoded (once: the call takes them as they are).
    """
    from .imageio import load_image
    from .pipeline import MAX_REFERENCE_IMAGES, load_pipeline

    text = getattr(args, "prompt", None) or getattr(args, "question", None)
    if text is not None and not text.strip():
        raise ValueError("the prompt is empty; say what to draw")
    images = getattr(args, "image", None) or []
    if len(images) > MAX_REFERENCE_IMAGES:
        raise ValueError(f"{len(images)} input images given; at most {MAX_REFERENCE_IMAGES} are allowed")
    decoded = [load_image(path) for path in images]  # unreadable, missing or oversized files are named here
    return load_pipeline(args.model, args.device, args.dtype), decoded


def _call_kwargs(args: argparse.Namespace, pipe, steps_bar: tqdm) -> dict[str, Any]:
    from .models.mllm import ThinkingConfig

    kwargs: dict[str, Any] = {
        "think": args.think,
        "seed": args.seed,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "image_guidance_scale": args.image_guidance,
        "callback": lambda step, latents: steps_bar.update(1),
        "glyphs": not args.no_glyphs,
    }
    if args.size is not None:
        kwargs["width"], kwargs["height"] = args.size
    if args.max_thinking_tokens is not None:
        kwargs["thinking"] = ThinkingConfig(seed=args.seed, max_thinking_tokens=args.max_thinking_tokens)
    return kwargs


def _settings(args: argparse.Namespace, pipe) -> dict[str, Any]:
    cfg = pipe.config
    return {
        "model": str(args.model),
        "think": args.think,
        "num_inference_steps": args.steps or cfg.num_inference_steps,
        "guidance_scale": cfg.guidance_scale if args.guidance is None else args.guidance,
        "image_guidance_scale": cfg.image_guidance_scale if args.image_guidance is None else args.image_guidance,
        "size": args.size,
    }


def _run_generate(args: argparse.Namespace) -> int:
    pipe, images = _load(args)
    steps = args.steps or pipe.config.num_inference_steps
    with tqdm(total=steps * 1, desc="denoising", disable=None, file=sys.stderr) as bar:
        streamer = _stderr_streamer(pipe.mllm.processor.tokenizer) if args.think else None
        out = pipe(args.prompt, images=images or None, num_images_per_prompt=args.num_images, streamer=streamer,
                   **_call_kwargs(args, pipe, bar))
    stem = "edit" if images else "generate"
    for k, image in enumerate(out.images):
        meta = {
            "prompt": args.prompt,
            "input_images": [str(p) for p in getattr(args, "image", None) or []],
            "reasoning": out.reasoning[0],
            "instruction": out.instruction[0],
            "thought": out.thought[0],
            "seed": args.seed,
            "index": k,
            "settings": _settings(args, pipe),
            "timings_s": out.timings,
            "token_counts": out.token_counts,
            "glyph_reference": out.glyphs[0] is not None,
        }
        path = save_with_sidecar(image, args.out / f"{stem}_{args.seed:04d}_{k:02d}", meta)
        print(path)
    return 0


def _run_reflect(args: argparse.Namespace) -> int:
    pipe, _ = _load(args)
    steps = args.steps or pipe.config.num_inference_steps
    with tqdm(total=steps * (args.rounds + 1), desc="denoising", disable=None, file=sys.stderr) as bar:
        kwargs = _call_kwargs(args, pipe, bar)
        think = kwargs.pop("think")
        seed = kwargs.pop("seed")
        result = pipe.reflect(args.prompt, rounds=args.rounds, think=think, seed=seed, **kwargs)
    for k, r in enumerate(result.rounds):
        meta = {"prompt": args.prompt, "round": k, "critique": r.critique, "instruction": r.instruction,
                "matches": r.matches, "seed": args.seed, "settings": _settings(args, pipe)}
        print(save_with_sidecar(r.image, args.out / f"reflect_{args.seed:04d}_round{k}", meta))
    print(json.dumps({"rounds": len(result.rounds), "accepted": result.rounds[-1].matches}))
    return 0


def _run_understand(args: argparse.Namespace) -> int:
    pipe, images = _load(args)
    print(pipe.understand(images, args.question))
    return 0
