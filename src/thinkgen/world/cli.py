"""``thinkgen world …`` subcommands.

Each subcommand lives in its own ``_add_*_command`` function that registers a parser and sets
``handler=`` through ``set_defaults``; :func:`add_commands` calls them all.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from tqdm import tqdm

from .export import export_samples
from .scenarios import SCENARIOS, iter_samples, resolve_scenarios
from .scene import PRESETS, Spec, get_preset
from .sheet import contact_sheet
from .splits import SPLITS, check_split

logger = logging.getLogger(__name__)

SHEET_MAX_SAMPLES = 48  # the contact sheet shows at most this many samples, to stay a readable size
SHEET_NAME = "contact_sheet.png"


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``world`` subcommands on ``subparsers``."""
    _add_sample_command(subparsers)
    _add_judge_command(subparsers)


def _add_sample_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="write world samples (PNG images, JSONL records, a contact sheet)",
        description=(
            "Generate samples of the nano world and write OUT/images/*.png, OUT/samples.jsonl, "
            f"OUT/world.json and OUT/{SHEET_NAME}. "
            "Example: thinkgen world sample --scenario reasoning -n 16 --out /tmp/world"
        ),
    )
    parser.add_argument("--scenario", default="all", help=f"one of {', '.join(SCENARIOS)}, or all (default: all)")
    parser.add_argument("-n", "--num-samples", type=int, default=16, help="how many samples (default: 16)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="stream seed (default: 0)")
    parser.add_argument("--split", default="train", help=f"one of {', '.join(SPLITS)} (default: train)")
    parser.add_argument("--preset", default="nano", help=f"world preset: {', '.join(PRESETS)} (default: nano)")
    parser.add_argument(
        "--judge", action="store_true",
        help="read every target image back with the judge, score it against its spec, write OUT/judge.json",
    )
    parser.set_defaults(handler=_run_sample)


def _run_sample(args: argparse.Namespace) -> int:
    # 1. Check every input before writing anything.
    scenarios = resolve_scenarios(args.scenario)
    check_split(args.split)
    config = get_preset(args.preset)
    if args.num_samples < 1:
        raise ValueError(f"-n/--num-samples={args.num_samples} must be >= 1")
    # 2. Generate (scenarios in turn, so "all" shows each of them).
    stream = iter_samples(scenarios, config=config, seed=args.seed, split=args.split, stop=args.num_samples)
    samples = list(tqdm(stream, total=args.num_samples, desc="world samples", disable=None))
    # 3. Write images, records and the contact sheet.
    jsonl = export_samples(samples, args.out)
    sheet = contact_sheet(samples[:SHEET_MAX_SAMPLES])
    sheet.save(args.out / SHEET_NAME)
    logger.info("records: %s; contact sheet: %s", jsonl, args.out / SHEET_NAME)
    # 4. Optionally judge what was written: the renders must satisfy their own specs.
    if args.judge:
        _judge_samples(samples, config, args.out)
    return 0


def _judge_samples(samples: list, config, out: Path) -> None:
    from .detect import DetectorConfig, WorldDetector
    from .score import score_spec

    detector = WorldDetector(DetectorConfig.for_world(config))
    per_scenario: dict[str, list[float]] = {}
    records = []
    for sample in tqdm(samples, desc="judging", disable=None):
        result = score_spec(sample.target_image(), sample.spec, detector)
        per_scenario.setdefault(sample.scenario, []).append(float(result.correct))
        records.append({"scenario": sample.scenario, "index": sample.index, "tag": sample.spec.tag,
                        "correct": result.correct, "score": result.score})
    summary = {name: sum(v) / len(v) for name, v in per_scenario.items()}
    (out / "judge.json").write_text(json.dumps({"accuracy": summary, "samples": records}, indent=2) + "\n")
    for name, accuracy in summary.items():
        logger.info("judge: %-15s %d samples, %.3f judged correct", name, len(per_scenario[name]), accuracy)


def _add_judge_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "judge",
        help="score an image against a spec with the world's judge (JSON on stdout)",
        description=(
            "Detect the objects and words in IMAGE and check them against a spec (GenEval-style include / "
            "exclude clauses, texts, exclude_texts). Prints correct, score and per-clause results as JSON. "
            "Reading words needs the OCR extra: pip install 'thinkgen[ocr]'. "
            'Example: thinkgen world judge out.png --spec \'{"tag": "single", "include": [{"class": "star", '
            '"count": 1, "color": "red"}]}\''
        ),
    )
    parser.add_argument("image", type=Path, help="the image to judge (PNG, JPEG, ...)")
    parser.add_argument("--spec", required=True, help="the spec as JSON text, or a path to a JSON file")
    parser.add_argument(
        "--preset", default=None, help=f"tune thresholds to this world: {', '.join(PRESETS)} (default: generic)"
    )
    parser.set_defaults(handler=_run_judge)


def _run_judge(args: argparse.Namespace) -> int:
    from ..imageio import load_image
    from .detect import DetectorConfig, WorldDetector
    from .score import score_spec

    # 1. Read the spec (a file or inline JSON) and the image.
    spec_path = Path(args.spec)
    try:
        spec_text = spec_path.read_text() if spec_path.is_file() else args.spec
        spec = Spec.from_dict(json.loads(spec_text))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"--spec is neither a JSON file nor a valid spec as JSON ({err})") from err
    spec.check_vocabulary()
    read_words = bool(spec.texts or spec.exclude_texts)
    if args.preset is None:
        config = DetectorConfig(read_words=read_words)
        spec.check_fits(config.max_objects(), "an image, for the judge (objects of at least its min_object_size)")
    else:
        world = get_preset(args.preset)
        config = DetectorConfig.for_world(world, read_words=read_words)
        spec.check_fits(world.capacity(), f"a canvas of the {args.preset} world")
    # 2. Detect (reading words only if the spec asks for any) and score.
    result = score_spec(load_image(args.image), spec, WorldDetector(config))
    print(json.dumps(result.to_dict(), indent=2))
    return 0
