"""GenEval (Ghosh et al., 2023): object-focused text-to-image alignment, scored by rules over detections.

Loader: ``evaluation_metadata.jsonl``, one prompt per line: ``tag`` (one of :data:`GENEVAL_TASKS`),
``prompt``, ``include`` (list of ``{"class", "count", "color"?, "position"?: [relation, clause index]}``)
and optionally ``exclude`` (``{"class", "count"}``).

Layout (the official one): ``<root>/<00000>/metadata.jsonl`` (the prompt's line) and
``<root>/<00000>/samples/<0000>.png``.

Scorer: GenEval's rules over any :class:`ObjectDetector`:

1. per class, keep detections with score > 0.3 (> 0.9 for the ``counting`` task), best first, at most 16,
   without non-maximum suppression (GenEval's default overlap limit of 1.0 keeps everything);
2. an include clause takes its class's ``count`` best detections and needs ``count`` of them; with a
   ``color`` each of those is classified and ``count`` must have that colour; with a ``position``
   ``(relation, j)`` every one of them must stand in ``relation`` to every object kept by clause ``j``
   (and fails if clause ``j`` failed), by the rule of :func:`thinkgen.world.geometry.relation`;
3. an exclude clause fails when its class has ``count`` or more detections;
4. an image is correct when every clause holds. Task accuracy is the mean over its images; the overall
   score is the mean of the six task accuracies.

Detectors: :class:`WorldObjectDetector` (the nano world's judge, which also knows colours) and
:class:`TransformersObjectDetector` (an OWL-ViT / OWLv2 / Grounding-DINO / DETR folder through transformers'
pipelines). Colours come from the detector when it names them, else from a :class:`ColourClassifier`:
:class:`ClipColourClassifier` (GenEval's own: CLIP zero-shot among the ten colours, from a local CLIP folder)
or, by default, :class:`PaletteColourClassifier` (a deterministic nearest-colour vote over the object's
pixels, for runs without a CLIP).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from ..imageio import atomic_write_bytes, load_image
from ..world.geometry import relation
from .clip import load_clip
from .runner import EvalItem, iter_jsonl_file, mean, png_bytes

GENEVAL_TASKS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
GENEVAL_COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black",
                                    "white")
GENEVAL_RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
SCORE_THRESHOLD = 0.3  # GenEval: detections must score above this …
COUNTING_SCORE_THRESHOLD = 0.9  # … and above this for the counting task
MAX_OBJECTS_PER_CLASS = 16  # GenEval: at most this many detections per class are kept


# ----------------------------------------------------------------------------- loader


@dataclass(frozen=True)
class Requirement:
    """One include or exclude clause: ``count`` objects of ``class_name`` (with ``color`` and ``position``)."""

    class_name: str
    count: int
    color: str | None = None
    position: tuple[str, int] | None = None


def _parse_clause(raw: Any, where: str, allow_extras: bool) -> Requirement:
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be an object, got {type(raw).__name__}")
    name, count = raw.get("class"), raw.get("count")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: field 'class' must be a non-empty string, got {name!r}")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"{where}: field 'count' must be an integer >= 1, got {count!r}")
    color, position = raw.get("color"), raw.get("position")
    if not allow_extras and (color is not None or position is not None):
        raise ValueError(f"{where}: exclude clauses take only 'class' and 'count'")
    if color is not None and color not in GENEVAL_COLOURS:
        raise ValueError(f"{where}: field 'color' is {color!r}; allowed: {', '.join(GENEVAL_COLOURS)}")
    if position is not None:
        if (not isinstance(position, (list, tuple)) or len(position) != 2 or position[0] not in GENEVAL_RELATIONS
                or not isinstance(position[1], int)):
            raise ValueError(
                f"{where}: field 'position' is {position!r}; expected [relation, clause index] with relation "
                f"one of {GENEVAL_RELATIONS}"
            )
        position = (position[0], position[1])
    return Requirement(name, count, color, position)


def parse_metadata(raw: Any, where: str) -> dict[str, Any]:
    """Check one GenEval metadata record and return it; ``where`` names it in errors."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    if raw.get("tag") not in GENEVAL_TASKS:
        raise ValueError(f"{where}: field 'tag' is {raw.get('tag')!r}; allowed: {', '.join(GENEVAL_TASKS)}")
    if not isinstance(raw.get("prompt"), str) or not raw["prompt"].strip():
        raise ValueError(f"{where}: field 'prompt' must be a non-empty string")
    include = raw.get("include")
    if not isinstance(include, list) or not include:
        raise ValueError(f"{where}: field 'include' must be a non-empty list")
    reqs = [_parse_clause(c, f"{where}: include[{i}]", True) for i, c in enumerate(include)]
    for i, req in enumerate(reqs):
        if req.position is not None and not 0 <= req.position[1] < i:
            raise ValueError(f"{where}: include[{i}] position refers to clause {req.position[1]}, "
                             f"which must be an earlier include clause (0..{i - 1})")
    exclude = raw.get("exclude", [])
    if not isinstance(exclude, list):
        raise ValueError(f"{where}: field 'exclude' must be a list")
    for i, c in enumerate(exclude):
        _parse_clause(c, f"{where}: exclude[{i}]", False)
    return raw


def requirements(metadata: dict[str, Any]) -> tuple[list[Requirement], list[Requirement]]:
    """The include and exclude clauses of a (checked) metadata record."""
    include = [_parse_clause(c, "include", True) for c in metadata["include"]]
    exclude = [_parse_clause(c, "exclude", False) for c in metadata.get("exclude", [])]
    return include, exclude


def load_geneval(path: str | Path) -> list[EvalItem]:
    """Read ``evaluation_metadata.jsonl``; keys are the line's position, zero-padded to 5 digits.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line that is not JSON or misses a field, naming the line and the field.
    """
    items = []
    for where, raw in iter_jsonl_file(path, "GenEval metadata file"):
        meta = parse_metadata(raw, where)
        items.append(EvalItem(f"{len(items):05d}", meta["tag"], meta["prompt"], meta={"geneval": meta}))
    if not items:
        raise ValueError(f"{path} holds no prompts")
    return items


@dataclass(frozen=True)
class GenEvalLayout:
    """``<key>/metadata.jsonl`` + ``<key>/samples/<k:04d>.png``, as GenEval's generation script writes."""

    def write(self, root: Path, item: EvalItem, images: Sequence[Image.Image]) -> list[str]:
        folder = root / item.key
        atomic_write_bytes(folder / "metadata.jsonl", (json.dumps(item.meta["geneval"]) + "\n").encode())
        paths = [f"{item.key}/samples/{k:04d}.png" for k in range(len(images))]
        for image, rel in zip(images, paths):
            atomic_write_bytes(root / rel, png_bytes(image))
        return paths

    def read(self, root: Path, item: EvalItem, paths: Sequence[str], num_images: int) -> list[Image.Image]:
        return [load_image(root / rel) for rel in paths]


# ----------------------------------------------------------------------------- detections


@dataclass(frozen=True)
class ObjectDetection:
    """One detected object.

    Attributes:
        class_name: its class (GenEval's COCO names, or the world's shapes).
        box: ``(x0, y0, x1, y1)`` in pixels, x right, y down.
        score: detector confidence in [0, 1].
        mask: optional (H, W) bool mask of the whole image (segmenting detectors).
        colour: the colour, if the detector knows it (the world's detector does); else it is classified.
    """

    class_name: str
    box: tuple[float, float, float, float]
    score: float
    mask: np.ndarray | None = None
    colour: str | None = None


class ObjectDetector(Protocol):
    """Finds objects of the given classes in an image."""

    detector_id: str

    def detect(self, image: Image.Image, class_names: Sequence[str]) -> list[ObjectDetection]:
        ...


class ColourClassifier(Protocol):
    """Names the colour of one detected object, among :data:`GENEVAL_COLOURS`.

    ``classifier_id`` names it (and its model) in the scorer's id, so scores made with another classifier
    are not reused.
    """

    classifier_id: str

    def classify(self, image: Image.Image, detection: ObjectDetection) -> str:
        ...


# Reference colours of the fallback classifier: the nano world's palette where the names agree (so its
# renders classify exactly), white for white.
_REFERENCE_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "orange": (250, 140, 0), "yellow": (245, 215, 0), "green": (30, 150, 50),
    "blue": (30, 80, 230), "purple": (130, 40, 180), "pink": (255, 130, 200), "brown": (125, 75, 25),
    "black": (20, 20, 20), "white": (255, 255, 255),
}


@dataclass(frozen=True)
class PaletteColourClassifier:
    """Deterministic colour naming: each pixel of the object votes for its nearest reference colour.

    The pixels are the object's mask if the detector gave one, else its box; without a mask the box's
    border colour is taken as background and only wins if nothing else is there.
    """

    classifier_id = "palette"

    def classify(self, image: Image.Image, detection: ObjectDetection) -> str:
        rgb = np.asarray(image.convert("RGB"), np.float32)  # (H, W, 3)
        h, w = rgb.shape[:2]
        x0, y0, x1, y1 = detection.box
        c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        c1, r1 = min(int(np.ceil(x1)), w), min(int(np.ceil(y1)), h)
        if c1 <= c0 or r1 <= r0:
            raise ValueError(f"detection box {detection.box} lies outside the {w}x{h} image")
        crop = rgb[r0:r1, c0:c1]
        palette = np.array(list(_REFERENCE_RGB.values()), np.float32)  # (10, 3)
        nearest = np.argmin(((crop[:, :, None, :] - palette) ** 2).sum(axis=3), axis=2)  # (h, w)
        if detection.mask is not None:
            votes = np.bincount(nearest[detection.mask[r0:r1, c0:c1]], minlength=len(palette))
        else:
            votes = np.bincount(nearest.ravel(), minlength=len(palette))
            border = np.concatenate([nearest[0], nearest[-1], nearest[:, 0], nearest[:, -1]])
            background = int(np.bincount(border, minlength=len(palette)).argmax())
            if votes.sum() > votes[background]:
                votes[background] = 0
        return list(_REFERENCE_RGB)[int(votes.argmax())]


GENEVAL_COLOUR_TEMPLATES: tuple[str, ...] = ("a photo of a {colour} {object}", "a photo of a {colour}-colored {object}",
                                             "a photo of a {colour} object")
MASK_BACKGROUND_RGB = (153, 153, 153)  # GenEval's default ``bgcolor`` "#999"


def geneval_crop(image: Image.Image, detection: ObjectDetection) -> Image.Image:
    """The object as GenEval shows it to CLIP: outside the mask (if any) grey, then the box cut out.

    The box is rounded to whole pixels and any part of it outside the image comes back black (PIL's crop,
    which GenEval uses).

    Raises:
        ValueError: a mask whose shape is not the image's (H, W).
    """
    rgb = image.convert("RGB")
    if detection.mask is not None:
        if detection.mask.shape != (rgb.height, rgb.width):
            raise ValueError(f"detection mask has shape {detection.mask.shape}; the image is "
                             f"{rgb.height}x{rgb.width} (H x W)")
        keep = Image.fromarray(detection.mask.astype(np.uint8) * 255)
        rgb = Image.composite(rgb, Image.new("RGB", rgb.size, MASK_BACKGROUND_RGB), keep)
    return rgb.crop(detection.box)


class ClipColourClassifier:
    """GenEval's colour classifier: CLIP zero-shot among :data:`GENEVAL_COLOURS`, from a local folder.

    What GenEval does (``evaluation/evaluate_images.py`` of djghosh13/geneval, ``color_classification`` and
    ``ImageCrops``; zero-shot weights by clip_benchmark's ``zero_shot_classifier``):

    - the model is open_clip's ViT-L-14 with the ``openai`` weights (openai/clip-vit-large-patch14 here);
    - per object class, each colour's text is the mean of the L2-normalised embeddings of
      :data:`GENEVAL_COLOUR_TEMPLATES` ("a photo of a {c} {class}", "a photo of a {c}-colored {class}",
      "a photo of a {c} object"), normalised again;
    - the image is the object's box crop; when the detection has a segmentation mask (GenEval's
      Mask2Former always gives one) everything outside the mask is first painted grey ``#999``; without a
      mask the box of the untouched image is used (:func:`geneval_crop`);
    - the colour is the argmax of the normalised crop embedding against the colour texts.

    Where ours departs: transformers' box detectors (OWL-ViT, Grounding DINO, DETR) give no masks, so the
    crop keeps the background inside the box that Mask2Former's mask would grey out, and a large coloured
    background can sway the answer. Preprocessing is the folder's ``CLIPProcessor``; for
    openai/clip-vit-large-patch14 that is open_clip's resize (shortest side 224, bicubic), centre crop and
    normalisation, up to the resize implementation. Objects are classified one by one, not in batches of 16.

    Args:
        model_path: the local CLIP folder (``CLIPModel`` + ``CLIPProcessor``).
        device: torch device (default cpu).

    Raises:
        FileNotFoundError: no such folder.
    """

    def __init__(self, model_path: str | Path, device: str | None = None) -> None:
        self.model, self.processor = load_clip(model_path, device)
        self.classifier_id = f"clip:{model_path}"
        self._colour_texts: dict[str, Any] = {}  # class name → (colours, dim) tensor, as GenEval caches them

    def _colour_embeddings(self, class_name: str) -> Any:
        import torch

        if class_name not in self._colour_texts:
            texts = [t.format(colour=c, object=class_name) for c in GENEVAL_COLOURS for t in GENEVAL_COLOUR_TEMPLATES]
            inputs = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True)
            with torch.no_grad():
                pooled = self.model.text_model(input_ids=inputs["input_ids"].to(self.model.device),
                                               attention_mask=inputs["attention_mask"].to(self.model.device))
                embeds = torch.nn.functional.normalize(self.model.text_projection(pooled.pooler_output), dim=-1)
            per_colour = embeds.reshape(len(GENEVAL_COLOURS), len(GENEVAL_COLOUR_TEMPLATES), -1).mean(dim=1)
            self._colour_texts[class_name] = torch.nn.functional.normalize(per_colour, dim=-1)
        return self._colour_texts[class_name]

    def similarities(self, image: Image.Image, detection: ObjectDetection) -> np.ndarray:
        """Cosine similarity of the object's crop to each colour's text, in :data:`GENEVAL_COLOURS` order."""
        import torch

        pixels = self.processor(images=[geneval_crop(image, detection)], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            pooled = self.model.vision_model(pixel_values=pixels.to(self.model.device)).pooler_output
            embed = torch.nn.functional.normalize(self.model.visual_projection(pooled), dim=-1)[0]
        return (self._colour_embeddings(detection.class_name) @ embed).float().cpu().numpy()

    def classify(self, image: Image.Image, detection: ObjectDetection) -> str:
        return GENEVAL_COLOURS[int(np.argmax(self.similarities(image, detection)))]


class WorldObjectDetector:
    """The nano world's judge as a GenEval detector: classes are shapes, colours come with the objects.

    Args:
        detector: a :class:`~thinkgen.world.detect.WorldDetector` (default: one for the ``nano`` preset).
    """

    detector_id = "world"

    def __init__(self, detector: Any = None) -> None:
        if detector is None:
            from ..world.detect import DetectorConfig, WorldDetector
            from ..world.scene import get_preset

            detector = WorldDetector(DetectorConfig.for_world(get_preset("nano"), read_words=False))
        self.detector = detector

    def detect(self, image: Image.Image, class_names: Sequence[str]) -> list[ObjectDetection]:
        w, h = image.size
        found = self.detector.detect(image).objects
        return [
            ObjectDetection(o.shape, (o.box[0] * w, o.box[1] * h, o.box[2] * w, o.box[3] * h), o.score,
                            colour=o.colour)
            for o in found if o.shape in class_names
        ]


class TransformersObjectDetector:
    """An object detector loaded from a local folder with transformers.

    Open-vocabulary models (OWL-ViT, OWLv2, Grounding DINO) run as ``zero-shot-object-detection`` with the
    prompt's classes as labels; closed-set ones (DETR, …) as ``object-detection``, whose labels must be
    GenEval's class names (COCO's are). Boxes come back in pixels; no threshold is applied here (the
    scorer applies GenEval's).

    Args:
        model_path: the model folder.
        task: ``"zero-shot-object-detection"`` or ``"object-detection"``; ``None`` picks by the model's
            config (zero-shot for OWL-ViT / OWLv2 / Grounding-DINO architectures).
        predict: instead of loading a model, a function ``(image, class_names) → [{"label", "score",
            "box": {"xmin", "ymin", "xmax", "ymax"}}]`` (transformers' pipeline output), for tests and
            custom models.
        device: torch device for the pipeline.
    """

    ZERO_SHOT_TYPES = ("owlvit", "owlv2", "grounding-dino")
    MIN_SCORE = 0.05  # what the pipeline returns at all; far below GenEval's 0.3, so nothing it keeps is lost

    def __init__(
        self,
        model_path: str | Path | None = None,
        task: str | None = None,
        predict: Callable[[Image.Image, Sequence[str]], list[dict[str, Any]]] | None = None,
        device: str | None = None,
    ) -> None:
        if predict is None:
            if model_path is None or not Path(model_path).is_dir():
                raise FileNotFoundError(f"detector model folder not found: {model_path}")
            predict = self._load(Path(model_path), task, device)
        self.predict = predict
        self.detector_id = f"transformers:{model_path}" if model_path else "transformers:custom"

    def _load(self, path: Path, task: str | None, device: str | None):
        from transformers import AutoConfig, pipeline

        if task is None:
            model_type = AutoConfig.from_pretrained(path).model_type
            task = "zero-shot-object-detection" if model_type in self.ZERO_SHOT_TYPES else "object-detection"
        pipe = pipeline(task, model=str(path), device=device)
        if task == "zero-shot-object-detection":
            return lambda image, names: pipe(image, candidate_labels=list(names), threshold=self.MIN_SCORE)
        return lambda image, names: pipe(image, threshold=self.MIN_SCORE)

    def detect(self, image: Image.Image, class_names: Sequence[str]) -> list[ObjectDetection]:
        out = []
        for d in self.predict(image, class_names):
            box = d["box"]
            out.append(ObjectDetection(str(d["label"]), (float(box["xmin"]), float(box["ymin"]),
                                                         float(box["xmax"]), float(box["ymax"])), float(d["score"])))
        return out


# ----------------------------------------------------------------------------- rules


def select_detections(detections: Sequence[ObjectDetection], tag: str) -> dict[str, list[ObjectDetection]]:
    """Per class, the detections GenEval keeps: above the task's score threshold, best first, at most 16."""
    threshold = COUNTING_SCORE_THRESHOLD if tag == "counting" else SCORE_THRESHOLD
    by_class: dict[str, list[ObjectDetection]] = {}
    for d in detections:
        if d.score > threshold:
            by_class.setdefault(d.class_name, []).append(d)
    return {c: sorted(ds, key=lambda d: -d.score)[:MAX_OBJECTS_PER_CLASS] for c, ds in by_class.items()}


def evaluate_detections(
    metadata: dict[str, Any],
    objects: dict[str, list[ObjectDetection]],
    colour_of: Callable[[ObjectDetection], str],
) -> tuple[bool, list[str]]:
    """GenEval's verdict on one image from its kept detections (:func:`select_detections`).

    Returns:
        ``(correct, reasons)``: reasons name every failed clause.
    """
    include, exclude = requirements(metadata)
    correct = True
    reasons: list[str] = []
    groups: list[list[ObjectDetection] | None] = []
    for req in include:
        found = objects.get(req.class_name, [])[: req.count]
        matched = len(found) >= req.count
        if not matched:
            reasons.append(f"expected {req.class_name} >= {req.count}, found {len(found)}")
        if matched and req.color is not None:
            colours = [colour_of(d) for d in found]
            if colours.count(req.color) < req.count:
                matched = False
                seen = ", ".join(f"{colours.count(c)} {c}" for c in GENEVAL_COLOURS if c in colours)
                reasons.append(f"expected {req.color} {req.class_name} >= {req.count}, found {seen}")
        if matched and req.position is not None:
            rel, target = req.position
            anchors = groups[target]
            if anchors is None:
                matched = False
                reasons.append(f"no target for {req.class_name} to be {rel}")
            else:
                bad = next(((a, b) for a in found for b in anchors if rel not in relation(a.box, b.box)), None)
                if bad is not None:
                    matched = False
                    actual = " and ".join(sorted(relation(*[d.box for d in bad]))) or "no relation to"
                    reasons.append(f"expected {req.class_name} {rel} target, found {actual} target")
        correct &= matched
        groups.append(found if matched else None)
    for req in exclude:
        num_found = len(objects.get(req.class_name, []))
        if num_found >= req.count:
            correct = False
            reasons.append(f"expected {req.class_name} < {req.count}, found {num_found}")
    return correct, reasons


def metadata_classes(metadata: dict[str, Any]) -> list[str]:
    """Every class a prompt's clauses name, in order."""
    names = [c["class"] for c in metadata["include"]] + [c["class"] for c in metadata.get("exclude", [])]
    return list(dict.fromkeys(names))


class GenEvalScorer:
    """GenEval's rules over a detector (see the module docstring).

    Args:
        detector: any :class:`ObjectDetector`.
        colour_classifier: names colours the detector does not give (default: :class:`PaletteColourClassifier`).
    """

    def __init__(self, detector: ObjectDetector, colour_classifier: ColourClassifier | None = None) -> None:
        self.detector = detector
        self.colours = colour_classifier or PaletteColourClassifier()
        self.scorer_id = f"geneval/{detector.detector_id}/{self.colours.classifier_id}"

    def score_image(self, image: Image.Image, metadata: dict[str, Any]) -> tuple[bool, list[str]]:
        """GenEval's verdict on one image."""
        detections = self.detector.detect(image, metadata_classes(metadata))
        objects = select_detections(detections, metadata["tag"])
        return evaluate_detections(metadata, objects, lambda d: d.colour or self.colours.classify(image, d))

    def score(self, item: EvalItem, images: list[Image.Image], record: dict[str, Any]) -> dict[str, Any]:
        verdicts = [self.score_image(image, item.meta["geneval"]) for image in images]
        correct = [c for c, _ in verdicts]
        return {
            "score": sum(correct) / len(correct),
            "passed": all(correct),
            "per_image": [{"correct": c, "reasons": r} for c, r in verdicts],
        }

    def aggregate(self, samples: list[dict[str, Any]], items: Sequence[EvalItem]) -> dict[str, Any]:
        # Task accuracy is a mean over images, as GenEval's summary does (every prompt has N images).
        per_task: dict[str, list[bool]] = {}
        for s in samples:
            if s.get("error") is None:
                per_task.setdefault(s["category"], []).extend(p["correct"] for p in s["per_image"])
        categories = {t: sum(v) / len(v) for t in GENEVAL_TASKS if (v := per_task.get(t))}
        return {
            "overall": mean(categories.values()),
            "categories": categories,
            "metrics": {"num_images": sum(len(v) for v in per_task.values())},
            "scale": "accuracy in [0, 1]; overall = mean of the task accuracies",
        }
