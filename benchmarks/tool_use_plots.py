"""The tool-use learning check's figures (benchmarks/tool_use_check.py): held-out accuracy with
tools along SFT, against direct answering and the control trained to answer directly; GRPO-ATS
curves with and without updates."""

from __future__ import annotations

import os
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    _pyplot().close(fig)
    os.replace(tmp, path)


def plot_sft(results: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    for k, r in enumerate(results):
        colour = f"C{k}"
        steps = [c["step"] for c in r["curve"]]
        acc.plot(steps, [c["tools"]["accuracy"] for c in r["curve"]], "-o", color=colour,
                 label=f"seed {r['seed']}: with tools")
        acc.plot(steps, [c["tools"]["execution_success"] for c in r["curve"]], ":", color=colour,
                 alpha=0.7, label=f"seed {r['seed']}: code ran without error")
        last = r["curve"][-1]
        acc.plot([last["step"]], [last["direct"]["accuracy"]], "v", color=colour, markersize=9,
                 label=f"seed {r['seed']}: tools disabled (direct)")
        if r.get("control"):
            acc.plot([last["step"]], [r["control"]["direct"]["accuracy"]], "x", color=colour,
                     markersize=10, mew=2, label=f"seed {r['seed']}: control trained to answer directly")
        loss.plot(*zip(*r["losses"], strict=True), color=colour, label=f"seed {r['seed']}")
    acc.set_xlabel("SFT step")
    acc.set_ylabel("held-out accuracy / share")
    acc.set_ylim(-0.03, 1.03)
    acc.set_title("Held-out arithmetic: accuracy with tools along SFT")
    acc.grid(alpha=0.3)
    acc.legend(fontsize=7, loc="center right")
    loss.set_xlabel("SFT step")
    loss.set_ylabel("training loss")
    loss.set_yscale("log")
    loss.set_title("SFT loss (model-written tokens)")
    loss.grid(alpha=0.3)
    loss.legend(fontsize=8)
    fig.suptitle("Tool-use learning check: tiny Qwen2.5-VL, multi-digit arithmetic")
    fig.tight_layout()
    _save(fig, path)


def plot_grpo(results: list[dict], path: Path) -> None:
    plt = _pyplot()
    keys = (("accuracy", "accuracy reward (batch mean)"), ("exec_success", "code ran without error"),
            ("tool_call_rate", "rollouts that called the sandbox"))
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    for (key, title), ax in zip(keys, axes[:3], strict=True):
        for k, r in enumerate(results):
            for name, style in (("updates", "-"), ("no_updates", ":")):
                s = r["runs"][name]["series"]
                ax.plot(s["step"], s[key], style, color=f"C{k}", alpha=0.85,
                        label=f"seed {r['seed']}, {name.replace('_', ' ')}")
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    # Both runs of a seed draw the same prompts step by step: their difference removes the
    # prompts' own difficulty, which moves a batch mean far more than learning does.
    ax, window = axes[3], 10
    for k, r in enumerate(results):
        up, frozen = r["runs"]["updates"]["series"], r["runs"]["no_updates"]["series"]
        diffs = [u - f for u, f in zip(up["accuracy"], frozen["accuracy"], strict=True)]
        moving = [sum(diffs[max(0, i - window + 1):i + 1]) / len(diffs[max(0, i - window + 1):i + 1])
                  for i in range(len(diffs))]
        ax.plot(up["step"], moving, color=f"C{k}", label=f"seed {r['seed']}")
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_title(f"accuracy, updates minus no updates ({window}-step mean)")
    ax.set_xlabel("GRPO step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle("GRPO-ATS on the tool-use check: with updates (solid) vs learning rate 0 (dotted)")
    fig.tight_layout()
    _save(fig, path)
