"""What the Dagster UI shows of the data, rendered without Dagster: markdown whose code fences
cannot collide with the text they quote, image thumbnails, and tables as plain rows (`Table`)
that the assets turn into Dagster's table metadata.

Quoted text (trajectories, prompts, responses) always goes inside a fence longer than any run of
backticks it holds: the text itself holds ```python fences, `<think>` tags and `#` comments,
which would otherwise end the fence, vanish as HTML or become headings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.core.images import thumbnail_data_url

THUMB = 96          # px, the longer side of a thumbnail
SEPARATOR = "\n\n---\n\n"


@dataclass
class Table:
    """A table for the UI: `columns` as (name, type) with type one of string, int, float, bool;
    `rows` as dicts keyed by column name. Assets turn it into a `TableMetadataValue`."""

    columns: list[tuple[str, str]]
    rows: list[dict] = field(default_factory=list)

    def __post_init__(self):
        names = {n for n, _ in self.columns}
        for i, row in enumerate(self.rows):
            if set(row) != names:
                raise ValueError(f"table row {i}: columns {sorted(row)} != {sorted(names)}")


def fence(text: str, info: str = "text") -> str:
    """`text` as a fenced code block that nothing inside it can close: the fence is one backtick
    longer than the longest run of backticks in the text (at least three)."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{text}\n{ticks}"


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… ({len(text) - limit} more characters)"


def cell(value, limit: int = 80) -> str:
    """A markdown table cell: one line, pipes escaped, cut to `limit` characters."""
    text = " ".join(str(value).split())
    if len(text) > limit:
        text = text[:limit - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|")


def thumbnails(paths: Iterable[Path], size: int = THUMB) -> str:
    """Markdown images (data URLs) of the files; a file that is missing or unreadable is named
    instead, so a broken reference shows rather than vanishes."""
    shown = []
    for path in paths:
        try:
            shown.append(f"![]({thumbnail_data_url(path, size)})")
        except (OSError, ValueError) as exc:
            shown.append(f"`{path.name}: {type(exc).__name__}`")
    return " ".join(shown)


def image_markdown(png: Path, alt: str) -> str:
    """A whole PNG (a chart) inline, as markdown."""
    import base64
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()})"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table; cells are given already rendered (thumbnails, `cell(...)` text)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def example(title: str, images: Sequence[Path] = (), texts: Sequence[tuple[str, str]] = (),
            limit: int = 1500) -> str:
    """One example: a bold title, thumbnails of its images, then each (label, text) quoted in a
    safe fence (cut to `limit` characters)."""
    parts = [f"**{title}**"]
    if images:
        parts.append(thumbnails(images))
    for label, text in texts:
        parts.append(f"{label}:\n\n{fence(clip(text, limit))}" if label else fence(clip(text, limit)))
    return "\n\n".join(parts)


def examples(parts: Sequence[str], empty: str = "(no rows)") -> str:
    return SEPARATOR.join(parts) if parts else empty


def funnel_chart(stages: Sequence[tuple[str, int]], path: Path, title: str) -> Path:
    """A funnel as a PNG: one centred bar per stage, widest first, each labelled with its count
    and its share of the first stage."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, _ in stages]
    counts = [c for _, c in stages]
    top = max(counts[0] if counts else 0, 1)
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(names) + 1.1))
    colours = ["#4c78a8"] + ["#72b7b2"] * max(len(names) - 2, 0) + ["#3b9c5a"] * (len(names) > 1)
    ax.barh(range(len(names)), counts, left=[(top - c) / 2 for c in counts], color=colours)
    for i, c in enumerate(counts):
        ax.text(top / 2, i, f"{c}  ({100 * c / top:.0f}%)", ha="center", va="center",
                fontsize=9, color="white" if c > top * 0.25 else "black")
    ax.set_yticks(range(len(names)), names, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, top)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def line_charts(series: dict[str, list[tuple[float, float]]], path: Path, title: str,
                columns: int = 2) -> Path:
    """One small line chart per named series ((step, value) points), in a grid, as a PNG; the
    last value is written beside each line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, points in series.items() if points] or ["(no data)"]
    rows = -(-len(names) // columns)
    # at most ~900 px wide: the UI shows markdown images at their own size, in a dialog
    fig, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 2.5 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        points = series.get(name, [])
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="." if len(points) < 40 else None, linewidth=1.2)
            ax.annotate(f"{ys[-1]:.4g}", (xs[-1], ys[-1]), fontsize=8, xytext=(-3, 5), ha="right",
                        textcoords="offset points")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def grouped_bars(groups: Sequence[str], bars: dict[str, Sequence[float]], path: Path, title: str,
                 ylabel: str, percent: bool = True) -> Path:
    """Grouped bars (one group per category, one bar per series) with each bar's value written
    on it, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(len(bars), 1)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(groups) + 1.5), 3.4))
    for k, (name, values) in enumerate(bars.items()):
        xs = [i + k * width for i in range(len(groups))]
        shown = [100 * v for v in values] if percent else list(values)
        drawn = ax.bar(xs, shown, width, label=name)
        ax.bar_label(drawn, labels=[f"{v:.0f}" if percent else f"{v:.3g}" for v in shown],
                     fontsize=7, padding=1)
    ax.set_xticks([i + width * (len(bars) - 1) / 2 for i in range(len(groups))], groups,
                  rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if percent:
        ax.set_ylim(0, 110)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from pipelines.core.atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
