"""Every threshold of the audit, in one frozen dataclass (docs/audit.md explains each check)."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.core.images import ImageLimits

_LIMITS = ImageLimits()


@dataclass(frozen=True)
class AuditConfig:
    """Every threshold of the audit. Grey levels are 0-255; scores are TM_CCOEFF_NORMED."""

    # crop_semantics
    crop_coverage: float = 0.9        # share of the GT box the located crop must contain (also the
                                      # share of the target an enhanced crop must keep)
    crop_max_area: float = 0.5        # the located crop may cover at most this share of the input
                                      # (or twice the box's): a larger "crop" does not zoom in
    zoom_min: float = 0.5             # zooms (output px per input px) searched when locating an
    zoom_max: float = 4.0             # output in the input; refinement reaches ~14 % beyond both
    match_min_score: float = 0.6      # correlation a located region must reach to count as found:
                                      # exact crops score > 0.9, enhanced ones > 0.7, misses < 0.5
    # contrast_semantics
    contrast_gain: float = 1.3        # the target's RMS contrast must grow by this factor
    contrast_gain_no_truth: float = 1.1  # without a target box (real pools): the local contrast of
                                      # the region the output shows must grow by this (enhancers
                                      # x1.03-1.37 at p10, brightening <= x1.09: contrast.py)
    # rotation_semantics
    rotation_tolerance_deg: float = 10.0   # largest residual tilt still called upright
    rotation_min_score: float = 0.85  # the best residual hypothesis must score this (1.5 deg off
                                      # the truth scores > 0.9, wrong angles < 0.8)
    rotation_fast_score: float = 0.9  # the exact upright hypothesis scoring this is upright
    rotation_zoom_max: float = 2.0    # rotated outputs are whole pages, rarely zoomed further
    # computation, answer, consistency
    numeric_tolerance: float = 1e-6   # relative difference allowed (absolute for |x| < 1)
    # image_sanity
    blank_std: float = 2.0            # grey std at or below this is a blank image (generated
                                      # scenes carry >= 2 levels of noise; faint text ~4)
    identical_diff: float = 0.5       # mean |difference| at 128 x 128 at or below this is a copy
                                      # of the input (a JPEG re-save or resize: <= 0.4; a 1.3x
                                      # contrast stretch of the faintest generated image: 0.7)
    min_side: int = _LIMITS.min_side              # the vision encoder's minimum side
    max_aspect_ratio: float = _LIMITS.max_aspect_ratio
    max_pixels: int = _LIMITS.max_pixels          # decompression-bomb guard, from the header
    # search internals (speed vs robustness)
    coarse_template_side: int = 24    # short side of the template in the coarse search, px
    refine_template_side: int = 64    # ... in the refinement (capped by full resolution)
    coarse_zoom_step: float = 1.2     # ratio between zooms of the coarse search
    early_exit_score: float = 0.95    # a refined match this good ends the search (look-alike
                                      # distractors refine to <= 0.93, true crops to >= 0.95)
    code_box_hints: int = 4           # boxes named in the code that produced an image, tried before
                                      # the search (kept only at >= early_exit_score; 0: none)
    code_rotation_hints: bool = True  # the rotation the code names is scored first (upright only
                                      # where the pixels reach rotation_fast_score; rotation.py)
    crop_band_clip: float = 8.0       # grey levels the band-passed images are clipped at when
                                      # locating crops (see `locate.py`)
    rotation_side: int = 256          # long side the input is reduced to for the rotation search
    workers: int | None = None        # trajectories audited at once by `audit_many`, in threads
                                      # (OpenCV and numpy release the GIL); None = one per core
    # judge (only with a judge: see `audit_many`)
    judge_image_side: int = 1024      # images shown to the judge are reduced to this long side
                                      # (a 3000 px page costs a VLM ~4x the tokens, sees no more)
    judge_max_images: int = 6         # produced images shown, the last ones (the final result)
    judge_text_chars: int = 3000      # each reasoning, code and printed text is cut to this
    judge_batch: int = 256            # questions built and sent together (memory: their images;
                                      # speed: enough to keep the client's concurrency busy)
    judge_unverified_passes: bool = False  # a trajectory the judge could not verify (over budget,
                                      # request failed, no yes/no) passes: False keeps only verified ones
