"""``thinkgen eval BENCH`` and ``thinkgen eval compare``: benchmark runs from the command line.

A run generates every prompt of a benchmark with and without thinking (``--both``, the default), in the
benchmark's official folder layout under ``OUT/think/`` and ``OUT/no_think/``, scores what it can, and
writes ``OUT/results.json``, ``OUT/report.html`` and ``OUT/scores.png``. Running the same command again
resumes: finished prompts and cached scores are kept, the rest is done.

Examples:
    thinkgen eval nano --model nano --out runs/eval/nano --limit 32
    thinkgen eval geneval --model path/to/model --data evaluation_metadata.jsonl --out runs/eval/geneval \\
        --detector path/to/owlv2 --colour-model path/to/clip-vit-large-patch14
    thinkgen eval wise --model path/to/model --data cultural_common_sense.json natural_science.json \\
        spatio-temporal_reasoning.json --out runs/eval/wise --judge-url http://127.0.0.1:8000/v1 \\
        --judge-model Qwen2.5-VL-72B-Instruct
    thinkgen eval compare runs/eval/nano_a runs/eval/nano_b
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import DTYPES
from .runner import (
    MODES,
    EvalIncomplete,
    EvalItem,
    GenerationConfig,
    Layout,
    Scorer,
    generate_mode,
    load_scores,
    score_mode,
)

logger = logging.getLogger(__name__)

ArgAdder = Callable[[argparse.ArgumentParser], None]
ScorerFactory = Callable[[argparse.Namespace], tuple[Scorer | None, str]]


@dataclass(frozen=True)
class Benchmark:
    """How the CLI runs one benchmark.

    Attributes:
        name: the subcommand.
        help: one line for ``--help``.
        num_images_per_prompt: the benchmark's official N (the ``-n`` default).
        load: arguments → prompts.
        layout: where the images go.
        make_scorer: arguments → the scorer, or ``(None, why not)`` when the run can only generate.
        add_args: the benchmark's own arguments.
    """

    name: str
    help: str
    num_images_per_prompt: int
    load: Callable[[argparse.Namespace], list[EvalItem]]
    layout: Layout
    make_scorer: ScorerFactory
    add_args: ArgAdder


# ----------------------------------------------------------------------------- judges and detectors


def _judge(args: argparse.Namespace):
    """The judge client from ``--judge-url`` / ``--judge-model``, or ``None`` when no URL is given."""
    from .judge import JudgeClient, JudgeConfig

    if not args.judge_url:
        return None
    config = JudgeConfig(args.judge_url, args.judge_model or "", timeout_s=args.judge_timeout,
                         max_retries=args.judge_retries, retry_wait_s=args.judge_retry_wait)
    return JudgeClient(config)


def _judged(make: Callable[[Any, argparse.Namespace], Scorer]) -> ScorerFactory:
    def build(args: argparse.Namespace) -> tuple[Scorer | None, str]:
        judge = _judge(args)
        if judge is None:
            return None, "no --judge-url given: images are generated but not judged"
        return make(judge, args), ""

    return build


def _geneval_scorer(args: argparse.Namespace) -> tuple[Scorer | None, str]:
    from .geneval import ClipColourClassifier, GenEvalScorer, TransformersObjectDetector, WorldObjectDetector

    if args.detector is None:
        return None, "no --detector given: images are generated but not scored"
    detector = WorldObjectDetector() if args.detector == "world" else TransformersObjectDetector(
        args.detector, device=args.device)
    colours = ClipColourClassifier(args.colour_model, args.device) if args.colour_model else None
    return GenEvalScorer(detector, colours), ""


def _cvtg_scorer(args: argparse.Namespace) -> tuple[Scorer | None, str]:
    from .cvtg import ClipSimilarity, CVTGScorer

    return CVTGScorer(clip=ClipSimilarity(args.clip, args.device) if args.clip else None), ""


def _dpg_scorer(judge: Any, args: argparse.Namespace) -> Scorer:
    from .dpg import DPGScorer, load_questions

    return DPGScorer(judge, load_questions(args.questions))


def _dpg_make_scorer(args: argparse.Namespace) -> tuple[Scorer | None, str]:
    if args.questions is None:
        return None, "no --questions file (DPG's dpg_bench.csv) given: images are generated but not scored"
    return _judged(_dpg_scorer)(args)


def _imgedit_scorer(judge: Any, args: argparse.Namespace) -> Scorer:
    from .imgedit import ImgEditScorer, load_rubrics

    return ImgEditScorer(judge, load_rubrics(args.rubrics))


def _wise_scorer(judge: Any, args: argparse.Namespace) -> Scorer:
    from .wise import WiseScorer

    return WiseScorer(judge)


def _rise_scorer(judge: Any, args: argparse.Namespace) -> Scorer:
    from .risebench import RiseBenchScorer

    return RiseBenchScorer(judge)


def _nano_scorer(args: argparse.Namespace) -> tuple[Scorer | None, str]:
    from ..world.scene import get_preset
    from .nano import NanoScorer

    return NanoScorer(get_preset(args.preset)), ""


# ----------------------------------------------------------------------------- benchmark table


def _data_arg(nargs: str | None = None, help_text: str = "the benchmark's prompt file") -> ArgAdder:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", type=Path, required=True, nargs=nargs, help=help_text)

    return add


def _with_images_dir(add: ArgAdder) -> ArgAdder:
    def both(p: argparse.ArgumentParser) -> None:
        add(p)
        p.add_argument("--images-dir", type=Path, default=None, help="folder of the input images (required)")

    return both


def _benchmarks() -> dict[str, Benchmark]:
    from . import cvtg, dpg, geneval, imgedit, nano, risebench, wise

    def geneval_args(p: argparse.ArgumentParser) -> None:
        _data_arg(help_text="GenEval's evaluation_metadata.jsonl")(p)
        p.add_argument("--detector", default=None,
                       help="'world' (the nano world's judge) or a local transformers detector folder "
                            "(OWL-ViT/OWLv2/Grounding-DINO/DETR); none: generate only")
        p.add_argument("--colour-model", type=Path, default=None, metavar="PATH",
                       help="local CLIP folder (GenEval's: openai/clip-vit-large-patch14) to name the colours the "
                            "detector does not give, as GenEval does; default: a deterministic palette vote")

    def imgedit_args(p: argparse.ArgumentParser) -> None:
        _with_images_dir(_data_arg(help_text="ImgEdit's basic_edit.json"))(p)
        p.add_argument("--rubrics", type=Path, default=None,
                       help="judge rubrics per edit type (ImgEdit's judge_rubrics.json); default: a generic rubric")

    def dpg_args(p: argparse.ArgumentParser) -> None:
        _data_arg(help_text="DPG's prompts.jsonl")(p)
        p.add_argument("--questions", type=Path, default=None, help="DPG's dpg_bench.csv (questions, dependencies)")

    def cvtg_args(p: argparse.ArgumentParser) -> None:
        _data_arg("+", "CVTG prompt file(s), e.g. CVTG/2.json CVTG/3.json")(p)
        p.add_argument("--clip", type=Path, default=None, help="local CLIP model folder for CLIPScore (optional)")

    def nano_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--preset", default="nano", help="world preset of the prompts (default: nano)")
        p.add_argument("--scenarios", nargs="+", default=None, help="scenarios to run (default: all)")

    def nano_load(args: argparse.Namespace) -> list[EvalItem]:
        from ..world.scenarios import SCENARIOS, check_scenario

        for s in args.scenarios or ():
            check_scenario(s)
        return nano.load_nano(args.limit or 16, args.scenarios or SCENARIOS, preset=args.preset)

    return {b.name: b for b in (
        Benchmark("geneval", "GenEval: object composition, rule-scored over a detector", 4,
                  lambda a: geneval.load_geneval(a.data), geneval.GenEvalLayout(), _geneval_scorer, geneval_args),
        Benchmark("wise", "WISE: world knowledge, judged (WiScore)", 1,
                  lambda a: wise.load_wise(a.data), wise.WISE_LAYOUT, _judged(_wise_scorer),
                  _data_arg("+", "WISE prompt file(s)")),
        Benchmark("risebench", "RISEBench: reasoning edits, judged (accuracy)", 1,
                  lambda a: risebench.load_risebench(a.data, a.images_dir), risebench.RISE_LAYOUT,
                  _judged(_rise_scorer), _with_images_dir(_data_arg(help_text="RISEBench's data_total.json"))),
        Benchmark("imgedit", "ImgEdit: basic edits, judged (1-5)", 1,
                  lambda a: imgedit.load_imgedit(a.data, a.images_dir), imgedit.IMGEDIT_LAYOUT,
                  _judged(_imgedit_scorer), imgedit_args),
        Benchmark("dpg", "DPG-Bench: dense prompts, judged questions with dependencies", 4,
                  lambda a: dpg.load_dpg(a.data), dpg.GridLayout(), _dpg_make_scorer, dpg_args),
        Benchmark("cvtg", "CVTG-2K: text rendering, OCR word accuracy and NED", 1,
                  lambda a: cvtg.load_cvtg(a.data), cvtg.CVTG_LAYOUT, _cvtg_scorer, cvtg_args),
        Benchmark("nano", "the nano world's test split, judged exactly by the world judge", 1,
                  nano_load, nano.NANO_LAYOUT, _nano_scorer, nano_args),
    )}


# ----------------------------------------------------------------------------- parser


def _add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="nano", help="model folder, or 'nano' for the shipped model (default)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="weight dtype (default: float32; bfloat16 for the full-size model on a GPU)")
    p.add_argument("--out", type=Path, required=True, help="run folder (created; an existing run is resumed)")
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--think", dest="modes", action="store_const", const=("think",), help="thinking only")
    modes.add_argument("--no-think", dest="modes", action="store_const", const=("no_think",),
                       help="no thinking only")
    modes.add_argument("--both", dest="modes", action="store_const", const=tuple(MODES),
                       help="both, side by side (default)")
    p.set_defaults(modes=tuple(MODES))
    p.add_argument("-n", "--num-images", type=int, default=None,
                   help="images per prompt (default: the benchmark's official number)")
    p.add_argument("--seed", type=int, default=0,
                   help="base seed; image k of prompt i uses seed + i*n + k (default: 0)")
    p.add_argument("--batch-size", type=int, default=4, help="prompts per pipeline call (default: 4)")
    p.add_argument("--limit", type=int, default=None,
                   help="only the first N prompts (nano: prompts per scenario, default 16)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="text guidance scale (default: the model's)")
    p.add_argument("--size", type=int, nargs=2, metavar=("WIDTH", "HEIGHT"), default=None,
                   help="output size (default: the model's, or the input image's for edits)")
    p.add_argument("--max-thinking-tokens", type=int, default=None, help="thinking budget (default: the model's)")
    p.add_argument("--max-instruction-tokens", type=int, default=None, help="instruction budget after </think>")
    p.add_argument("--no-glyphs", action="store_true",
                   help="no glyph references or edit marks, for a model trained with them (see thinkgen.glyphs)")
    judge = p.add_argument_group("judge (WISE, RISEBench, ImgEdit, DPG)")
    judge.add_argument("--judge-url", default=None, help="OpenAI-compatible API base URL, e.g. http://host:8000/v1")
    judge.add_argument("--judge-model", default=None, help="the judge's model name at that endpoint")
    judge.add_argument("--judge-timeout", type=float, default=120.0, help="seconds per judge request (default: 120)")
    judge.add_argument("--judge-retries", type=int, default=3, help="retries per failure (default: 3)")
    judge.add_argument("--judge-retry-wait", type=float, default=1.0,
                       help="seconds before the first retry, doubling after each (default: 1)")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``eval`` with one subcommand per benchmark and ``compare``."""
    parser = commands.add_parser("eval", help="run benchmarks (GenEval, WISE, RISEBench, ImgEdit, DPG, CVTG, nano)",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subs = parser.add_subparsers(dest="bench", required=True)
    for bench in _benchmarks().values():
        p = subs.add_parser(bench.name, help=bench.help, description=f"{bench.help}. {_LAYOUT_NOTE}")
        bench.add_args(p)
        _add_common_args(p)
        p.set_defaults(handler=_run_benchmark)
    p = subs.add_parser("compare", help="compare two runs of one benchmark side by side")
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_B/compare_<RUN_A name>)")
    p.set_defaults(handler=_run_compare)


_LAYOUT_NOTE = ("Images go to OUT/think and OUT/no_think in the benchmark's official layout; results.json, "
                "report.html and scores.png to OUT. Rerunning resumes.")


# ----------------------------------------------------------------------------- running


def _pipeline_loader(args: argparse.Namespace) -> Callable[[], Any]:
    cache: list[Any] = []

    def load() -> Any:
        if not cache:
            from ..pipeline import load_pipeline

            cache.append(load_pipeline(args.model, args.device, args.dtype))
        return cache[0]

    return load


def run_benchmark(args: argparse.Namespace, load_pipeline: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Generate, score and report one benchmark run (the body of ``thinkgen eval BENCH``).

    Args:
        args: the parsed command line.
        load_pipeline: builds the pipeline (default: ``from_pretrained(args.model)``); called only if
            something is left to generate.

    Returns:
        The ``results.json`` record; ``status`` is ``"complete"`` or ``"incomplete"`` (scoring errors or a
        judge that went down; what was scored is kept).
    """
    from .report import build_results, write_report, write_results

    bench = _benchmarks()[args.bench]
    # 1. Check every input before generating anything.
    items = bench.load(args)
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit={args.limit} must be >= 1")
        if bench.name != "nano":
            items = items[: args.limit]
    width, height = args.size if args.size else (None, None)
    config = GenerationConfig(
        num_images_per_prompt=args.num_images or bench.num_images_per_prompt, seed=args.seed,
        batch_size=args.batch_size, num_inference_steps=args.steps, guidance_scale=args.guidance,
        height=height, width=width, max_thinking_tokens=args.max_thinking_tokens,
        max_instruction_tokens=args.max_instruction_tokens, glyphs=not args.no_glyphs,
    )
    scorer, why_not = bench.make_scorer(args)
    if scorer is None:
        logger.info("%s: %s", bench.name, why_not)
    load = load_pipeline or _pipeline_loader(args)
    run_settings = {"benchmark": bench.name, "model": str(args.model)}
    fatal: tuple[type[BaseException], ...] = ()
    if scorer is not None:
        from .judge import JudgeUnavailable

        fatal = (JudgeUnavailable,)

    # 2. Generate and score each mode.
    modes: dict[str, dict[str, Any]] = {}
    stopped: str | None = None
    for mode in args.modes:
        root = args.out / mode
        records, stats = generate_mode(load, items, bench.layout, root, MODES[mode], config, run_settings,
                                       desc=f"{bench.name} {mode}")
        # Per-prompt seconds are in the manifest, so the rate covers every session of a resumed run.
        num_images = len(records) * config.num_images_per_prompt
        info: dict[str, Any] = {"num_prompts": len(items), "generation": {
            "num_images": num_images,
            "seconds_per_image": sum(r.get("seconds", 0.0) for r in records) / num_images,
            "this_session": {"num_prompts_done_before": stats.num_prompts_done_before,
                             "num_images_generated": stats.num_images_generated,
                             "seconds": round(stats.seconds, 3)}}, "summary": None, "errors": []}
        if scorer is not None and stopped is None:
            try:
                samples = score_mode(scorer, items, records, bench.layout, root, config.num_images_per_prompt,
                                     fatal, desc=f"scoring {mode}")
            except EvalIncomplete as err:
                stopped = str(err)
                cached = load_scores(root, scorer.scorer_id)
                samples = [cached[it.key] for it in items if it.key in cached]
            info["errors"] = [{"key": s["key"], "error": s["error"]} for s in samples if s.get("error")]
            info["num_scored"] = sum(s.get("error") is None for s in samples)
            info["summary"] = scorer.aggregate(samples, items)
        modes[mode] = info

    # 3. Report.
    settings = {"model": str(args.model), "data": [str(p) for p in _as_list(getattr(args, "data", None))],
                "generation": config.fingerprint() | {"batch_size": config.batch_size},
                "scorer_id": scorer.scorer_id if scorer else None, "not_scored_because": why_not or None}
    results = build_results(bench.name, settings, modes)
    incomplete = stopped is not None or any(m["errors"] for m in modes.values())
    results["status"] = "incomplete" if incomplete else "complete"
    if stopped:
        results["stopped"] = stopped
    write_results(args.out, results)
    write_report(args.out)
    return results


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _print_summary(results: dict[str, Any], out: Path) -> None:
    from .report import summary_standard_errors

    for mode, info in results["modes"].items():
        summary = info.get("summary")
        if summary is None:
            print(f"{mode}: not scored")
            continue
        errors = summary_standard_errors(summary)

        def shown(name: str, value: float, digits: int) -> str:
            return f"{value:.{digits}f}" + (f" ± {errors[name]:.{digits}f}" if name in errors else "")

        overall = summary["overall"]
        cats = ", ".join(f"{c} {shown(c, v, 3)}" for c, v in summary["categories"].items())
        print(f"{mode}: overall {'–' if overall is None else shown('overall', overall, 4)} ({cats})")
    print(f"results: {out / 'results.json'}\nreport: {out / 'report.html'}")


def _run_benchmark(args: argparse.Namespace) -> int:
    try:
        results = run_benchmark(args)
    except KeyboardInterrupt:
        print(f"interrupted; finished prompts are kept in {args.out}: run the same command again to resume",
              file=sys.stderr)
        return 130
    _print_summary(results, args.out)
    if results["status"] != "complete":
        num_errors = sum(len(m["errors"]) for m in results["modes"].values())
        reason = results.get("stopped") or f"{num_errors} prompt(s) could not be scored (see results.json 'errors')"
        print(f"error: the run is incomplete: {reason}", file=sys.stderr)
        return 1
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    from .report import compare_runs

    out = args.out or args.run_b / f"compare_{args.run_a.resolve().name}"
    page, data = compare_runs(args.run_a, args.run_b, out)
    for mode, rows in json.loads(data.read_text())["modes"].items():
        paired = ", ".join(f"{c} {p['b_minus_a']:+.3f} ± {p['standard_error']:.3f}" for c, p in rows["_paired"].items())
        print(f"{mode}: B − A per prompt, ± standard error: {paired or 'no prompt scored in both'}")
    print(f"page: {page}\njson: {data}")
    return 0
