"""Every chart thyme_train draws, each written atomically as a PNG (matplotlib, headless):

    loss_curve(losses, path, title)               SFT: training loss per step
    save_curves(records, out_dir)                 GRPO: reward, tool-use and collapse curves per step
    accuracy_bars(categories, by_mode, path, t)   evaluation: accuracy per category, a bar per
                                                  mode, with confidence intervals
"""

from __future__ import annotations

import os
from pathlib import Path

REWARD_CURVES = ("reward", "rewards/accuracy_reward/mean", "rewards/format_reward/mean",
                 "rewards/consistency_reward/mean")
TOOL_CURVES = ("thyme/tool_call_rate", "thyme/exec_success", "thyme/images_per_rollout",
               "thyme/turns_per_rollout")
# answer collapse (thyme_train.collapse): groups without signal, agreement, entropies; TRL's
# frac_reward_zero_std (total reward) and entropy (every model token) beside ours
COLLAPSE_CURVES = ("thyme/collapse/zero_variance_groups", "frac_reward_zero_std",
                   "thyme/collapse/answer_agreement", "thyme/collapse/top_answer_share",
                   "thyme/collapse/answer_entropy", "thyme/collapse/answer_token_entropy", "entropy",
                   "thyme/answer_collapse")
CURVE_FILES = {"curves_rewards.png": REWARD_CURVES, "curves_tool_use.png": TOOL_CURVES,
               "curves_collapse.png": COLLAPSE_CURVES}


def line_chart(series: dict[str, list[tuple[float, float]]], path: str | os.PathLike, title: str,
               ylabel: str | None = None, size: tuple[float, float] = (7, 4), dpi: int = 100) -> Path:
    """One line per named series of (step, value) points; a legend when there are several."""
    fig, ax = _figure(size)
    for label, points in series.items():
        if points:
            ax.plot(*zip(*points, strict=True), marker=".", linewidth=1, label=label)
    ax.set_xlabel("step")
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(ax.lines) > 1:
        ax.legend(fontsize=8)
    return _save(fig, path, dpi)


def loss_curve(losses: list[tuple[int, float]], path: str | os.PathLike, title: str) -> Path:
    """The SFT loss curve."""
    return line_chart({"loss": losses}, path, f"Thyme SFT {title}",
                      ylabel="training loss (unmasked tokens)", size=(6, 3.5))


def save_curves(records: list[dict], out_dir: str | os.PathLike) -> list[Path]:
    """GRPO's reward, tool-use and answer-collapse curves from logged records (each with a
    `step`); returns the files written."""
    written = []
    for name, keys in CURVE_FILES.items():
        series = {_short(key): [(r["step"], r[key]) for r in records if key in r] for key in keys}
        written.append(line_chart(series, Path(out_dir) / name, name[:-4].replace("_", " ")))
    return written


def accuracy_bars(categories: list[str], by_mode: dict[str, list[float]], path: str | os.PathLike,
                  title: str, errors: dict[str, list[list[float]]] | None = None) -> Path:
    """Accuracy (0..1) per category, one bar per mode side by side; `errors`: per mode, a
    [low, high] interval per category drawn as error bars (NaN: none)."""
    import math

    fig, ax = _figure((max(4.0, 1.2 * len(categories)), 3.2))
    width = 0.8 / max(len(by_mode), 1)
    for k, (mode, values) in enumerate(by_mode.items()):
        heights = [0.0 if math.isnan(v) else 100 * v for v in values]
        yerr = None
        if errors and mode in errors:
            yerr = [[0.0 if math.isnan(lo) or math.isnan(v) else 100 * (v - lo) for v, (lo, _) in
                     zip(values, errors[mode], strict=True)],
                    [0.0 if math.isnan(hi) or math.isnan(v) else 100 * (hi - v) for v, (_, hi) in
                     zip(values, errors[mode], strict=True)]]
        ax.bar([i + k * width for i in range(len(categories))], heights, width, label=mode,
               yerr=yerr, capsize=3 if yerr else 0)
    ax.set_xticks([i + width * (len(by_mode) - 1) / 2 for i in range(len(categories))], categories,
                  rotation=20, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _save(fig, path, dpi=110)


def _short(key: str) -> str:
    """`rewards/format_reward/mean` -> `format_reward`; `thyme/exec_success` -> `exec_success`."""
    parts = key.split("/")
    return parts[-2] if key.endswith("/mean") else parts[-1]


def _figure(size: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def _save(fig, path: str | os.PathLike, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    from pipelines.core.atomic import atomic_path

    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)
