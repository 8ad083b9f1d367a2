"""Augmentations: new pool samples made from real images, each with its transform recorded as
ground truth and lineage to its source (THYME.md §3: the rotation set is real images turned by a
random 30°–335°, the generator told the angle; contrast data is faint text made readable).

    augment_samples(samples, store, AugmentConfig()) -> Augmented(samples, drops, quarantine)
    augment_shard(samples_file, out_dir, store, cfg) -> report      (idempotent, atomic)

- **rotate**: the image turned counter-clockwise by an angle drawn from [angle_min, angle_max]
  on an enlarged canvas (`Image.rotate(angle, expand=True)`), the corners filled with the
  image's own border colour. `meta.angle` follows the generated pool's convention:
  `Image.rotate(-angle, expand=True)` restores it. A source box becomes `upright_box`, and
  `corners` are where the upright image's corners landed.
- **low_contrast**: the image's tones squeezed around its mean grey (`factor`) and shifted
  (`offset`): `out = mean + factor * (in - mean) + offset` per channel. `meta.box` is the
  source's box, or the whole image when the source had none (the target is then the whole
  image); `augmentation.rms_before` / `rms_after` are the target's RMS contrast (grey std / 255)
  before and after.

Each copy is a new sample (its own image, so its own id) with the source's question, answer and
other ground truth, `task` rotate or contrast, and `meta.lineage` naming the source sample, its
image and origin. The draw (who gets a copy, the angle, the factor) depends only on the seed and
the source's id: a re-run makes the same copies. Samples that get no copy are counted by reason
(`drops`); an image that cannot be decoded or stored is quarantined with its source's origin.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.core.atomic import write_parquet
from pipelines.core.images import ImageRejected, ImageStore
from pipelines.core.schema import QUARANTINE_SCHEMA, SAMPLE_SCHEMA, Sample, quarantine_row

KINDS = ("rotate", "low_contrast")
TASK_OF = {"rotate": "rotate", "low_contrast": "contrast"}
# Geometry of the source frame: not true of a rotated copy (kept as upright_* instead).
_FRAME_KEYS = ("box", "boxes", "angle", "corners", "upright_box", "upright_size", "image_size",
               "exif_orientation", "original_path", "lineage", "augmentation")
FINGERPRINT_KEY = b"thyme.fingerprint"
REPORT_KEY = b"thyme.report"
DROP_REASONS = {
    "no_image": "a text-only sample: nothing to transform",
    "multi_image": "a sample with several input images (only single-image samples are copied)",
    "no_answer": "no ground-truth answer: the copy could not be checked",
    "augmented": "already an augmented copy (copies are not copied again)",
    "excluded_task": "its task is not in the configured tasks",
    "excluded_source": "its source is not in the configured sources",
    "already_rotated": "a rotation sample (or one with an angle): turning it again is ambiguous",
    "already_contrast": "a contrast sample: already faint",
    "too_small": "the image's short side is below min_side",
    "too_flat": "the target's RMS contrast is below min_contrast: nothing to recover",
    "not_drawn": "not drawn for this transform (the share)",
}


@dataclass(frozen=True)
class AugmentConfig:
    """Which samples get which copies, and how strong the transforms are."""

    rotate_share: float = 0.0            # of eligible samples, the share given a rotated copy
    angle_min: int = 30                  # the paper's recipe: a random 30°–335°
    angle_max: int = 335
    contrast_share: float = 0.0          # of eligible samples, the share given a faint copy
    contrast_factor: tuple[float, float] = (0.15, 0.35)   # tone range kept (1 = unchanged)
    contrast_offset: tuple[float, float] = (-40.0, 40.0)  # grey levels added (dark / washed out)
    min_contrast: float = 0.08           # target RMS contrast a source needs (faint stays legible)
    min_side: int = 224                  # short side a source image needs
    tasks: tuple[str, ...] = ()          # source tasks eligible (empty: any)
    sources: tuple[str, ...] = ()        # source names eligible (empty: any)
    seed: int = 0
    jpeg_quality: int = 95               # JPEG sources stay JPEG (PNG and WebP become PNG)

    def __post_init__(self):
        for name in ("rotate_share", "contrast_share", "min_contrast"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1] (got {getattr(self, name)})")
        if not 0 < self.angle_min <= self.angle_max < 360:
            raise ValueError(f"need 0 < angle_min <= angle_max < 360 (got {self.angle_min}, "
                             f"{self.angle_max})")
        lo, hi = self.contrast_factor
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"contrast_factor must satisfy 0 < low <= high < 1 (got {lo}, {hi})")
        if self.contrast_offset[0] > self.contrast_offset[1]:
            raise ValueError("contrast_offset: low > high")

    @property
    def enabled(self) -> bool:
        return self.rotate_share > 0 or self.contrast_share > 0


@dataclass
class Augmented:
    samples: list[Sample]
    drops: dict[str, Counter] = field(default_factory=dict)   # transform -> reason -> count
    quarantine: list[dict] = field(default_factory=list)       # QUARANTINE_SCHEMA rows


def _draw(seed: int, kind: str, sample_id: str) -> np.random.Generator:
    key = int.from_bytes(hashlib.blake2b(f"{kind}|{sample_id}".encode(), digest_size=8).digest(), "big")
    return np.random.default_rng([seed, key])


def _eligible(sample: Sample, kind: str, cfg: AugmentConfig) -> str | None:
    """Why `sample` gets no copy of `kind` before any pixel is read (None: it may)."""
    meta = sample.meta or {}
    if not sample.images:
        return "no_image"
    if len(sample.images) > 1:
        return "multi_image"
    if not sample.answer.strip():
        return "no_answer"
    if meta.get("augmentation"):
        return "augmented"
    if cfg.tasks and sample.task not in cfg.tasks:
        return "excluded_task"
    if cfg.sources and sample.source not in cfg.sources:
        return "excluded_source"
    if kind == "rotate" and (sample.task == "rotate" or meta.get("angle") is not None):
        return "already_rotated"
    if kind == "low_contrast" and sample.task == "contrast":
        return "already_contrast"
    ref = sample.images[0]
    if min(ref.width, ref.height) < cfg.min_side:
        return "too_small"
    share = cfg.rotate_share if kind == "rotate" else cfg.contrast_share
    if _draw(cfg.seed, kind + "/share", sample.id).random() >= share:
        return "not_drawn"
    return None


def augment_samples(samples: list[Sample], store: ImageStore, cfg: AugmentConfig) -> Augmented:
    """The copies of `samples` the configuration asks for (see the module docstring)."""
    out = Augmented([], {kind: Counter() for kind in KINDS})
    for sample in samples:
        for kind in KINDS:
            why = _eligible(sample, kind, cfg)
            if why is not None:
                out.drops[kind][why] += 1
                continue
            try:
                copy = _make_copy(sample, kind, store, cfg)
            except ImageRejected as exc:
                out.quarantine.append(quarantine_row(
                    sample.origin_file, sample.origin_row, exc.reason,
                    f"{kind} copy of sample {sample.id}: {exc.detail}", sample.source))
                continue
            if isinstance(copy, str):
                out.drops[kind][copy] += 1
            else:
                out.samples.append(copy)
                out.drops[kind]["kept"] += 1
    return out


def _make_copy(sample: Sample, kind: str, store: ImageStore, cfg: AugmentConfig) -> Sample | str:
    ref = sample.images[0]
    try:
        with Image.open(store.path(ref)) as im:
            im.load()
            image = im.convert("RGB") if im.mode not in ("RGB", "L") else im.copy()
    except FileNotFoundError:
        raise ImageRejected("missing_image_file", f"{ref.relpath} is not in the store") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageRejected("undecodable_image", f"{ref.relpath}: {exc}") from None
    rng = _draw(cfg.seed, kind, sample.id)
    meta = {k: v for k, v in (sample.meta or {}).items() if k not in _FRAME_KEYS}
    if kind == "rotate":
        angle = int(rng.integers(cfg.angle_min, cfg.angle_max + 1))
        fill = border_colour(image)
        made = image.rotate(angle, resample=Image.BICUBIC, expand=True, fillcolor=fill)
        meta.update(angle=angle, image_size=list(made.size), upright_size=[ref.width, ref.height],
                    corners=rotated_corners(ref.width, ref.height, angle))
        if (sample.meta or {}).get("box"):
            meta["upright_box"] = sample.meta["box"]
        meta["augmentation"] = {"kind": kind, "angle": angle, "fill": list(fill) if
                                isinstance(fill, tuple) else fill, "resample": "bicubic"}
    else:
        box = _box(sample, ref.width, ref.height)
        grey = np.asarray(image.convert("L"), np.float32)
        before = rms_contrast(grey, box)
        if before < cfg.min_contrast:
            return "too_flat"
        factor = round(float(rng.uniform(*cfg.contrast_factor)), 3)
        offset = round(float(rng.uniform(*cfg.contrast_offset)), 1)
        made = low_contrast(image, factor, offset)
        after = rms_contrast(np.asarray(made.convert("L"), np.float32), box)
        meta["box"] = list(box)
        if not (sample.meta or {}).get("box"):
            meta["box_is_whole_image"] = True
        meta["augmentation"] = {"kind": kind, "factor": factor, "offset": offset,
                                "mean": round(float(grey.mean()), 2),
                                "rms_before": round(before, 4), "rms_after": round(after, 4)}
    meta["lineage"] = {"sample_id": sample.id, "source": sample.source, "image": ref.hash,
                       "origin": {"file": sample.origin_file, "row": sample.origin_row}}
    new_ref, _ = store.put(_encode(made, ref.ext, cfg.jpeg_quality))
    return Sample(question=sample.question, images=[new_ref], source=sample.source,
                  origin_file=sample.origin_file, origin_row=sample.origin_row,
                  answer=sample.answer, task=TASK_OF[kind], meta=meta)


def _box(sample: Sample, width: int, height: int) -> tuple[int, int, int, int]:
    """The source's box clipped to the image, or the whole image."""
    box = (sample.meta or {}).get("box")
    if box and len(box) == 4:
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
        if x2 > x1 and y2 > y1:
            return x1, y1, x2, y2
    return 0, 0, width, height


def rms_contrast(grey: np.ndarray, box) -> float:
    """Grey std / 255 inside `box` (the audit's contrast measure)."""
    x1, y1, x2, y2 = box
    return float(grey[y1:y2, x1:x2].std() / 255.0)


def low_contrast(image: Image.Image, factor: float, offset: float) -> Image.Image:
    """Tones squeezed around the mean grey by `factor`, shifted by `offset` grey levels."""
    pixels = np.asarray(image, np.float32)
    mean = float(np.asarray(image.convert("L"), np.float32).mean())
    faint = mean + factor * (pixels - mean) + offset
    return Image.fromarray(np.clip(np.rint(faint), 0, 255).astype(np.uint8), image.mode)


def border_colour(image: Image.Image) -> tuple[int, ...] | int:
    """The mean colour of the image's outermost pixels: the rotated canvas's corners blend in
    rather than framing the content in black."""
    a = np.asarray(image)
    ring = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).reshape(-1, *a.shape[2:])
    mean = ring.mean(axis=0)
    return int(round(float(mean))) if np.ndim(mean) == 0 else tuple(int(round(float(v))) for v in mean)


def rotated_corners(width: int, height: int, angle: float) -> list[list[float]]:
    """Where the corners (top-left, top-right, bottom-right, bottom-left) of a W x H image land
    after `Image.rotate(angle, expand=True)`: counter-clockwise on screen about the centre,
    then shifted so the bounding box starts at 0."""
    t = math.radians(angle)
    c, s = math.cos(t), math.sin(t)
    cx, cy = width / 2, height / 2
    points = [(x * c + y * s, -x * s + y * c)
              for x, y in ((-cx, -cy), (width - cx, -cy), (width - cx, height - cy), (-cx, height - cy))]
    left = min(p[0] for p in points)
    top = min(p[1] for p in points)
    return [[round(x - left, 1), round(y - top, 1)] for x, y in points]


def _encode(image: Image.Image, ext: str, quality: int) -> bytes:
    out = io.BytesIO()
    if ext == "jpg":
        image.save(out, format="JPEG", quality=quality, subsampling=0)
    else:
        image.save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# A shard: one pool shard's samples -> its augmented samples (the Dagster asset and the CLI)
# ---------------------------------------------------------------------------------------------

def fingerprint(cfg: AugmentConfig, samples_file: Path) -> str:
    st = os.stat(samples_file)
    payload = json.dumps([asdict(cfg), samples_file.name, st.st_size, st.st_mtime_ns], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def augment_shard(samples_file: str | os.PathLike, out_dir: str | os.PathLike, store: ImageStore,
                  cfg: AugmentConfig) -> dict:
    """Copies of one pool shard's samples: `out_dir/samples/<shard>.parquet` (kept copies) and
    `out_dir/quarantine/<shard>.parquet`. A shard already done with the same configuration and
    input is not redone (`skipped`). Returns the shard's report: per transform, how many samples
    were kept (a copy made) and dropped by reason, and the quarantine's reasons."""
    samples_file, out_dir = Path(samples_file), Path(out_dir)
    name = samples_file.name
    target = out_dir / "samples" / name
    fp = fingerprint(cfg, samples_file)
    if target.exists():
        meta = pq.read_schema(target).metadata or {}
        if meta.get(FINGERPRINT_KEY, b"").decode() == fp:
            return {**json.loads(meta[REPORT_KEY]), "skipped": True}
    t0 = time.perf_counter()
    samples = [Sample.from_row(r) for r in pq.read_table(samples_file).to_pylist()]
    result = augment_samples(samples, store, cfg) if cfg.enabled else Augmented([], {})
    report = {"shard": samples_file.stem, "samples_in": len(samples), "copies": len(result.samples),
              "by_transform": {k: dict(c) for k, c in result.drops.items()},
              "quarantined": len(result.quarantine),
              "quarantined_by_reason": dict(Counter(q["reason"] for q in result.quarantine)),
              "seconds": round(time.perf_counter() - t0, 3), "skipped": False}
    write_parquet(pa.Table.from_pylist(result.quarantine, schema=QUARANTINE_SCHEMA),
                  out_dir / "quarantine" / name)
    table = pa.Table.from_pylist([s.to_row() for s in result.samples], schema=SAMPLE_SCHEMA)
    table = table.replace_schema_metadata({FINGERPRINT_KEY: fp.encode(),
                                           REPORT_KEY: json.dumps(report).encode()})
    write_parquet(table, target)        # last: its presence marks the shard done
    return report


def summarise(reports: list[dict]) -> dict:
    """Totals over shard reports: samples in, copies, and per transform kept / dropped by reason."""
    by: dict[str, Counter] = {}
    for r in reports:
        for kind, counts in r["by_transform"].items():
            by.setdefault(kind, Counter()).update(counts)
    return {"shards": len(reports), "samples_in": sum(r["samples_in"] for r in reports),
            "copies": sum(r["copies"] for r in reports),
            "by_transform": {k: dict(c) for k, c in by.items()},
            "quarantined": sum(r["quarantined"] for r in reports),
            "skipped_shards": sum(1 for r in reports if r.get("skipped"))}
