"""Generation for benchmarks: seeded, batched, resumable, written in each benchmark's official layout.

A run folder holds one sub-folder per thinking mode (``think/``, ``no_think/``); each is the root of the
benchmark's official layout, so the benchmark's own scorer can run on it unchanged. Beside the images,
each mode folder has

* ``run.json``: the generation settings; a resumed run must use the same ones (the images would
  otherwise mix two settings);
* ``manifest.jsonl``: one line per finished prompt (image paths, seeds, reasoning, instruction). It is the
  done marker: a prompt is finished once its line is there, and a resumed run skips it. Images are written
  atomically before the line, and a batch's lines are appended in one write, so an interrupted run loses
  at most the batch in flight and regenerates it identically;
* ``scores.jsonl``: one line per scored prompt (the scorer's cache; see :func:`score_mode`).

Seeds: image ``k`` of prompt ``i`` starts from the noise of ``seed + i·N + k`` (N images per prompt),
drawn on the CPU, so it is the same on any device and at any batch size. Thinking samples its tokens from
one stream per pipeline call, seeded with the call's first image seed; batches have fixed boundaries
(prompts ``[b·B, (b+1)·B)``) so a resumed run thinks exactly as an uninterrupted one at the same batch
size ``B``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image
from tqdm import tqdm

from ..imageio import atomic_write_bytes, load_image

if TYPE_CHECKING:
    import torch

    from ..pipeline import ThinkGenPipeline

logger = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
RUN_CONFIG = "run.json"
SCORES = "scores.jsonl"
STANDARD_ERROR = "standard_error/"  # prefix of a summary's metrics that give the standard error of a row
MODES: dict[str, bool] = {"think": True, "no_think": False}
"""Mode folder name → the pipeline's ``think`` argument."""


@dataclass(frozen=True)
class EvalItem:
    """One prompt of a benchmark.

    Attributes:
        key: the prompt's id, unique within the benchmark (GenEval ``00012``, WISE ``prompt_id`` …); names
            its files in the official layout.
        category: the group its score is reported under (task, category, edit type, scenario).
        prompt: what the model is asked.
        input_images: images to edit (paths, or PIL images made in memory); empty for text-to-image.
        meta: the benchmark's own fields, JSON-ready, for its scorer.
        index: the prompt's position in the whole benchmark, for loaders that can return part of it (some
            of its scenarios). It sets the prompt's seeds, so a prompt draws the same images in a part as in
            the whole. ``None``: its position in the list run.
    """

    key: str
    category: str
    prompt: str
    input_images: tuple[Path | Image.Image, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    index: int | None = None


class Layout(Protocol):
    """Where a benchmark's images go inside a mode folder, and how they are read back."""

    def write(self, root: Path, item: EvalItem, images: Sequence[Image.Image]) -> list[str]:
        """Write the images of one prompt (atomically); return their paths relative to ``root``."""
        ...

    def read(self, root: Path, item: EvalItem, paths: Sequence[str], num_images: int) -> list[Image.Image]:
        """The ``num_images`` images of one prompt from the paths :meth:`write` returned."""
        ...


def png_bytes(image: Image.Image) -> bytes:
    """``image`` encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class FileLayout:
    """One PNG per image at ``path_of(item, k)`` (relative to the mode folder)."""

    path_of: Callable[[EvalItem, int], str]

    def write(self, root: Path, item: EvalItem, images: Sequence[Image.Image]) -> list[str]:
        paths = [self.path_of(item, k) for k in range(len(images))]
        for image, rel in zip(images, paths):
            atomic_write_bytes(root / rel, png_bytes(image))
        return paths

    def read(self, root: Path, item: EvalItem, paths: Sequence[str], num_images: int) -> list[Image.Image]:
        return [load_image(root / rel) for rel in paths]


def suffixed(stem: str, k: int) -> str:
    """``stem.png`` for the first image of a prompt, ``stem_k.png`` for the others: the official one-image
    layouts (WISE, ImgEdit, RISEBench, CVTG) stay exact at one image per prompt."""
    return f"{stem}.png" if k == 0 else f"{stem}_{k}.png"


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class GenerationConfig:
    """How images are generated for a benchmark run.

    Attributes:
        num_images_per_prompt: images per prompt (GenEval and DPG use 4).
        seed: base seed; image ``k`` of prompt ``i`` uses ``seed + i·num_images_per_prompt + k``.
        batch_size: prompts per pipeline call.
        num_inference_steps, guidance_scale: sampler settings (``None``: the model's).
        height, width: output size (``None``: the model's, or an edit's input size).
        max_thinking_tokens, max_instruction_tokens: thinking budgets (``None``: the pipeline's defaults).
        glyphs: glyph references for models trained with them (``False``: the DiT reads the text alone).
    """

    num_images_per_prompt: int = 1
    seed: int = 0
    batch_size: int = 4
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None
    max_thinking_tokens: int | None = None
    max_instruction_tokens: int | None = None
    glyphs: bool = True

    def __post_init__(self) -> None:
        for name in ("num_images_per_prompt", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if (self.height is None) != (self.width is None):
            raise ValueError(f"give both height and width or neither (got {self.height}, {self.width})")

    def image_seed(self, index: int, k: int) -> int:
        """The seed of image ``k`` of prompt ``index``."""
        return self.seed + index * self.num_images_per_prompt + k

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change the images: a resumed run must match them. The batch size only moves
        thinking's random stream, so it is recorded but not enforced."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "batch_size"}


def _check_run_config(root: Path, settings: dict[str, Any]) -> None:
    """Write ``run.json`` on the first run; on a resume, refuse settings that differ from it."""
    path = root / RUN_CONFIG
    if path.is_file():
        # A generation setting newer than the run is absent from its run.json: the run had its default.
        defaults = {f.name: f.default for f in dataclasses.fields(GenerationConfig)}
        saved = {**defaults, **json.loads(path.read_text())}
        diff = {k: (saved.get(k), v) for k, v in settings.items() if k != "batch_size" and saved.get(k) != v}
        if diff:
            changes = ", ".join(f"{k}: {old!r} → {new!r}" for k, (old, new) in diff.items())
            raise ValueError(
                f"{root} holds a run made with other settings ({changes}); resume with the same settings or "
                "choose another --out"
            )
        if saved.get("batch_size") != settings.get("batch_size"):
            logger.warning("batch size changed from %s to %s: thinking of the remaining prompts may differ "
                           "from an uninterrupted run", saved.get("batch_size"), settings.get("batch_size"))
        return
    atomic_write_bytes(path, (json.dumps(settings, indent=2) + "\n").encode())


# ----------------------------------------------------------------------------- manifests


def read_jsonl_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file written by appends; a torn last line (an interrupted append) is
    dropped, a torn line elsewhere is an error."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if n == len(lines):
                logger.warning("%s: ignoring the unfinished last line %d", path, n)
                break
            raise ValueError(f"{path} line {n} is not JSON ({err}); the file is damaged") from err
    return records


def append_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append ``records`` in one write and flush to disk, so they land together or not at all (short of a
    torn write, which :func:`read_jsonl_records` drops)."""
    data = "".join(json.dumps(r, default=str) + "\n" for r in records)
    if not data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    _drop_torn_tail(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _drop_torn_tail(path: Path) -> None:
    """Cut a torn last line (left by an interrupted append) so the next append starts a clean line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        content = f.read()
        keep = content.rfind(b"\n") + 1
        logger.warning("%s: dropping an unfinished last line (%d bytes)", path, len(content) - keep)
        f.truncate(keep)


def load_manifest(root: Path) -> dict[str, dict[str, Any]]:
    """Finished prompts of a mode folder, by key."""
    return {r["key"]: r for r in read_jsonl_records(root / MANIFEST)}


# ----------------------------------------------------------------------------- generation


@dataclass
class GenerationStats:
    """What one :func:`generate_mode` call did."""

    num_prompts_done_before: int = 0
    num_prompts_generated: int = 0
    num_images_generated: int = 0
    seconds: float = 0.0


def _output_size(pipe: ThinkGenPipeline, item_images: list[Image.Image], config: GenerationConfig) -> tuple[int, int]:
    """(height, width) the pipeline will draw at, needed to shape the seeded noise."""
    if config.height is not None and config.width is not None:
        return config.height, config.width
    if len(item_images) == 1:
        # The pipeline's own rule for an edit: the input's size, fitted to its limits and multiples.
        width, height = pipe.fit_size(*item_images[0].size)
        return height, width
    return pipe.config.height, pipe.config.width


def _noise(pipe: ThinkGenPipeline, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
    """Initial noise, one seeded draw per image: (len(seeds), C, h, w)."""
    import torch  # here, so that building the CLI does not import torch

    factor = pipe.codec.downscale_factor
    shape = (pipe.codec.latent_channels, height // factor, width // factor)
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


def _thinking(config: GenerationConfig, seed: int):
    from ..models.mllm import ThinkingConfig

    budgets = {
        name: value
        for name, value in (("max_thinking_tokens", config.max_thinking_tokens),
                            ("max_instruction_tokens", config.max_instruction_tokens))
        if value is not None
    }
    # A thought the model never closes must not stop a benchmark run: the row is conditioned on all it wrote
    # (as the released code does) and its image is scored like any other.
    return ThinkingConfig(seed=seed, on_missing_think_end="all", **budgets)


def generate_mode(
    load_pipeline: Callable[[], ThinkGenPipeline],
    items: Sequence[EvalItem],
    layout: Layout,
    root: Path,
    think: bool,
    config: GenerationConfig,
    run_settings: dict[str, Any] | None = None,
    desc: str = "generating",
) -> tuple[list[dict[str, Any]], GenerationStats]:
    """Generate every unfinished prompt of ``items`` into the mode folder ``root``.

    Args:
        load_pipeline: called once, and only if something is left to generate.
        items: the benchmark's prompts, in their official order (an item's ``index``, else its position, sets
            its seeds).
        layout: where the images go.
        root: the mode folder (created).
        think: the pipeline's ``think`` argument for this mode.
        config: generation settings.
        run_settings: further settings a resume must match (model, benchmark).
        desc: progress bar label.

    Returns:
        The manifest record of every item (in ``items`` order) and what this call generated.
    """
    root.mkdir(parents=True, exist_ok=True)
    settings = {**(run_settings or {}), "think": think, **config.fingerprint(), "batch_size": config.batch_size}
    _check_run_config(root, settings)
    done = load_manifest(root)
    stats = GenerationStats(num_prompts_done_before=sum(it.key in done for it in items))
    index_of = {it.key: i if it.index is None else it.index for i, it in enumerate(items)}
    if len(index_of) != len(items):
        raise ValueError("benchmark items have duplicate keys")
    if len(set(index_of.values())) != len(items):
        raise ValueError("benchmark items have duplicate indices: two prompts would draw the same seeds")
    todo = [it for it in items if it.key not in done]
    n = config.num_images_per_prompt
    if todo:
        pipe = load_pipeline()
        start = time.perf_counter()
        with tqdm(total=len(todo) * n, desc=desc, unit="img", disable=None) as bar:
            for b in range(0, len(items), config.batch_size):
                batch = [it for it in items[b : b + config.batch_size] if it.key not in done]
                if not batch:
                    continue
                records = _generate_batch(pipe, batch, [index_of[it.key] for it in batch], layout, root, think,
                                          config)
                append_jsonl(root / MANIFEST, records)
                done.update({r["key"]: r for r in records})
                stats.num_prompts_generated += len(records)
                stats.num_images_generated += len(records) * n
                bar.update(len(records) * n)
        stats.seconds = time.perf_counter() - start
    return [done[it.key] for it in items], stats


def _generate_batch(
    pipe: ThinkGenPipeline,
    batch: list[EvalItem],
    indices: list[int],
    layout: Layout,
    root: Path,
    think: bool,
    config: GenerationConfig,
) -> list[dict[str, Any]]:
    """One batch of prompts → images on disk and their manifest records (not yet appended)."""
    n = config.num_images_per_prompt
    inputs = [[load_image(im) for im in it.input_images] for it in batch]
    sizes = [_output_size(pipe, imgs, config) for imgs in inputs]
    # One pipeline call per output size and input count: a call draws every image at one size.
    groups: dict[tuple[Any, ...], list[int]] = {}
    for j, imgs in enumerate(inputs):
        groups.setdefault((sizes[j], len(imgs)), []).append(j)
    records: list[dict[str, Any] | None] = [None] * len(batch)
    for (size, num_inputs), rows in groups.items():
        seeds = [[config.image_seed(indices[j], k) for k in range(n)] for j in rows]
        call_start = time.perf_counter()
        out = pipe(
            [batch[j].prompt for j in rows],
            images=[inputs[j] for j in rows] if num_inputs else None,
            think=think,
            num_images_per_prompt=n,
            height=size[0],
            width=size[1],
            num_inference_steps=config.num_inference_steps,
            guidance_scale=config.guidance_scale,
            latents=_noise(pipe, [s for row in seeds for s in row], *size),
            thinking=_thinking(config, seeds[0][0]),
            glyphs=config.glyphs,
        )
        seconds_per_prompt = (time.perf_counter() - call_start) / len(rows)
        for r, j in enumerate(rows):
            item = batch[j]
            paths = layout.write(root, item, out.images[r * n : (r + 1) * n])
            records[j] = {
                "key": item.key,
                "index": indices[j],
                "category": item.category,
                "prompt": item.prompt,
                "images": paths,
                "seeds": seeds[r],
                "think": think,
                "thought": out.thought[r],
                "reasoning": out.reasoning[r],
                "instruction": out.instruction[r],
                "seconds": round(seconds_per_prompt, 4),
            }
    return [r for r in records if r is not None]


# ----------------------------------------------------------------------------- scoring


class Scorer(Protocol):
    """Scores a benchmark's images.

    ``scorer_id`` names the scorer and its settings (judge model, detector); cached scores made by another
    scorer are not reused.
    """

    scorer_id: str

    def score(self, item: EvalItem, images: list[Image.Image], record: dict[str, Any]) -> dict[str, Any]:
        """Score the images of one prompt.

        Returns:
            A JSON-ready dict with ``score`` (the prompt's value on the benchmark's scale, averaged over its
            images), ``passed`` (bool, or ``None`` where the benchmark has no pass/fail) and any details.
        """
        ...

    def aggregate(self, samples: list[dict[str, Any]], items: Sequence[EvalItem]) -> dict[str, Any]:
        """Benchmark scores from the per-prompt results: ``overall``, ``categories`` (name → value),
        ``metrics`` (further named values) and ``scale`` (what the numbers mean)."""
        ...


class EvalIncomplete(RuntimeError):
    """Scoring stopped early (the judge is down); the scores made so far are kept in ``scores.jsonl``."""


def load_scores(root: Path, scorer_id: str) -> dict[str, dict[str, Any]]:
    """Cached successful scores of a mode folder made by ``scorer_id``, by key (the last line wins)."""
    cached: dict[str, dict[str, Any]] = {}
    for r in read_jsonl_records(root / SCORES):
        if r.get("scorer_id") == scorer_id:
            cached[r["key"]] = r
    return {k: r for k, r in cached.items() if r.get("error") is None}


def score_mode(
    scorer: Scorer,
    items: Sequence[EvalItem],
    records: Sequence[dict[str, Any]],
    layout: Layout,
    root: Path,
    num_images: int,
    fatal: tuple[type[BaseException], ...] = (),
    desc: str = "scoring",
) -> list[dict[str, Any]]:
    """Score every prompt of a mode folder, reusing the cached scores in ``scores.jsonl``.

    Each result is appended as soon as it is made, so an interrupted scoring resumes where it stopped. A
    prompt whose scoring raises ``ValueError`` (e.g. a judge answer that stays malformed after retries) gets
    an ``error`` entry and the others go on; it is scored again on the next run. An exception of a
    ``fatal`` type (the judge is unreachable) stops scoring with :class:`EvalIncomplete`.

    Returns:
        One result per item (``key``, ``category``, ``score``, ``passed``, ``error`` and the scorer's details).
    """
    cached = load_scores(root, scorer.scorer_id)
    results = []
    todo = [(it, rec) for it, rec in zip(items, records) if it.key not in cached]
    with tqdm(total=len(todo), desc=desc, unit="prompt", disable=None if todo else True) as bar:
        for item, record in zip(items, records):
            if item.key in cached:
                results.append(cached[item.key])
                continue
            base = {"key": item.key, "category": item.category, "scorer_id": scorer.scorer_id}
            try:
                images = layout.read(root, item, record["images"], num_images)
                result = {**base, **scorer.score(item, images, record), "error": None}
            except fatal as err:
                raise EvalIncomplete(
                    f"scoring stopped at {item.key!r}: {err}. {len(results)} of {len(items)} prompts are scored; "
                    f"they are kept in {root / SCORES} and a rerun continues from there"
                ) from err
            except ValueError as err:
                logger.error("could not score %s: %s", item.key, err)
                result = {**base, "score": None, "passed": None, "error": str(err)}
            append_jsonl(root / SCORES, [result])
            results.append(result)
            bar.update(1)
    return results


def mean(values: Iterable[float]) -> float | None:
    """The mean of ``values``, ``None`` when there are none."""
    values = list(values)
    return sum(values) / len(values) if values else None


def _category_values(samples: Iterable[dict[str, Any]], value: str) -> dict[str, list[float]]:
    groups: dict[str, list[float]] = {}
    for s in samples:
        if s.get(value) is not None:
            groups.setdefault(s["category"], []).append(float(s[value]))
    return groups


def category_means(samples: Iterable[dict[str, Any]], value: str = "score") -> dict[str, float]:
    """Mean of ``value`` per category over the samples that have it, categories in first-seen order."""
    return {c: sum(v) / len(v) for c, v in _category_values(samples, value).items()}


def standard_error(values: Sequence[float]) -> float | None:
    """Standard error of the mean of ``values`` (sample standard deviation over sqrt(n)); ``None`` for fewer
    than two."""
    n = len(values)
    if n < 2:
        return None
    m = sum(values) / n
    return (sum((x - m) ** 2 for x in values) / (n - 1) / n) ** 0.5


def category_standard_errors(samples: Iterable[dict[str, Any]], value: str = "score") -> dict[str, float | None]:
    """Standard error of :func:`category_means` per category (sample standard deviation over sqrt(n)), and of
    their mean as ``"overall"`` (categories independent); ``None`` where a category has a single sample.

    The prompt is the unit: several images of one prompt enter as their mean, since they share its
    difficulty."""
    errors = {c: standard_error(v) for c, v in _category_values(samples, value).items()}
    known = list(errors.values())
    errors["overall"] = (sum(e * e for e in known) ** 0.5 / len(known)  # type: ignore[operator]
                         if known and None not in known else None)
    return errors


def read_json_file(path: str | Path, what: str) -> Any:
    """Parse a benchmark's JSON file, naming it (and the line and column) when it is missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: line {err.lineno}, column {err.colno}: {err.msg}") from err


def iter_jsonl_file(path: str | Path, what: str) -> Iterator[tuple[str, Any]]:
    """``(where, record)`` per non-blank line of a benchmark's JSONL file; ``where`` names file and line for
    error messages. A missing file or a line that is not JSON is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {n}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not JSON ({err.msg})") from err


def require_field(record: Any, name: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``record[name]``, checked to be a ``kind`` (and non-empty if a string)."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    value = record.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) or (isinstance(value, str) and not value.strip()):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ValueError(f"{where}: field {name!r} must be a non-empty {names}, got {value!r}")
    return value


def check_images_dir(images_dir: str | Path | None, relative_paths: Sequence[str], what: str) -> Path:
    """The folder of a benchmark's input images, checked to exist and hold every listed file."""
    if images_dir is None:
        raise ValueError(f"{what} needs --images-dir: the folder of its input images (they are not in its data file)")
    folder = Path(images_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"input image folder not found: {folder}")
    missing = [p for p in relative_paths if not (folder / p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(relative_paths)} input images are missing under {folder}, e.g. "
            + ", ".join(missing[:5])
        )
    return folder
