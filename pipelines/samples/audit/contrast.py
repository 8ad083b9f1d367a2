"""Contrast measures for the contrast check: RMS contrast (grey std / 255) of the target box
before and after, and whether an output of the input's shape still shows the input's content
around the target (then it is the whole image, maybe resized, and needs no `locate`). Without a
target (real pools), the local contrast of the whole region the output shows, before and after
(`local_contrast`)."""

from __future__ import annotations

import math

import cv2
import numpy as np


def rms(grey: np.ndarray) -> float:
    return float(grey.std()) / 255.0 if grey.size else 0.0


def aligned_score(grey: np.ndarray, out: np.ndarray, box) -> float:
    """Correlation of the output (the whole input, maybe resized) with the input around the
    target box: does the output show the input's content where the target is?"""
    H, W = grey.shape
    oh, ow = out.shape
    bw, bh = box[2] - box[0], box[3] - box[1]
    x1, y1 = max(0, box[0] - bw // 2), max(0, box[1] - bh // 2)
    x2, y2 = min(W, box[2] + bw // 2), min(H, box[3] + bh // 2)
    a = grey[y1:y2, x1:x2].astype(np.float32)
    sx, sy = ow / W, oh / H
    b = out[int(y1 * sy):max(int(y1 * sy) + 1, int(round(y2 * sy))),
            int(x1 * sx):max(int(x1 * sx) + 1, int(round(x2 * sx)))]
    if b.shape != a.shape:
        b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA)
    a, b = a - a.mean(), b.astype(np.float32) - b.mean()
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / denom if denom > 0 else 0.0


def target_contrast(grey: np.ndarray, out: np.ndarray, region, box) -> tuple[float, float]:
    """The target's RMS contrast before (`box` in the input) and after (the same place in `out`,
    which shows the input's `region` scaled to its size); only the part of the box inside the
    region is measured."""
    oh, ow = out.shape
    inter = (max(region[0], box[0]), max(region[1], box[1]),
             min(region[2], box[2]), min(region[3], box[3]))
    sx, sy = ow / (region[2] - region[0]), oh / (region[3] - region[1])
    ox1, oy1 = int(round((inter[0] - region[0]) * sx)), int(round((inter[1] - region[1]) * sy))
    ox2, oy2 = int(round((inter[2] - region[0]) * sx)), int(round((inter[3] - region[1]) * sy))
    ix1, iy1, ix2, iy2 = (int(round(v)) for v in inter)
    before = rms(grey[iy1:iy2, ix1:ix2])
    after = rms(out[max(0, oy1):min(oh, oy2), max(0, ox1):min(ow, ox2)])
    return before, after


LOCAL_WINDOW = 15           # px: the neighbourhood of local contrast
LOCAL_FLOOR = 10.0          # grey levels added to a neighbourhood's mean (black stays finite)


def local_contrast(grey: np.ndarray) -> float:
    """Mean local Weber contrast: each 15x15 neighbourhood's grey std over its mean (+10). On
    21 photos (scikit-image's samples, whole and centre crops) CLAHE, equalisation, PIL's
    Contrast(1.5-2), autocontrast and percentile stretches raise it by x1.03-x1.37 at the 10th
    percentile (median x1.4-x1.9); brightening x1.3 stays <= x1.09, blurring and lowering
    contrast drop it, a re-save keeps x1.00 (docs/audit.md)."""
    a = grey.astype(np.float32)
    mean = cv2.blur(a, (LOCAL_WINDOW, LOCAL_WINDOW))
    var = np.maximum(cv2.blur(a * a, (LOCAL_WINDOW, LOCAL_WINDOW)) - mean * mean, 0)
    return float((np.sqrt(var) / (mean + LOCAL_FLOOR)).mean()) if a.size else 0.0


def region_local_contrast(grey: np.ndarray, out: np.ndarray, region) -> tuple[float, float]:
    """Local contrast of the input's `region` and of `out` (which shows that region), measured
    at the region's size in the input so a zoomed output is not judged at another scale."""
    x1, y1, x2, y2 = (int(round(v)) for v in region)
    before = grey[max(0, y1):y2, max(0, x1):x2]
    if before.size == 0:
        return 0.0, 0.0
    after = cv2.resize(out, (before.shape[1], before.shape[0]), interpolation=cv2.INTER_AREA)
    return local_contrast(before), local_contrast(after)
