"""What the audit's optional judge is shown: our instructions, the question, the input image, each
turn's reasoning, code and sandbox result (printed text, errors, produced images) and the final
answer, as `pipelines.core.judge.Judge` question parts (text and image bytes). Images are
reduced to `judge_image_side`, texts cut to `judge_text_chars`."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from pipelines.core.answers import parse_options
from pipelines.core.images import store_path
from pipelines.core.schema import Sample
from pipelines.core.trajectory import Trajectory
from pipelines.samples.audit.config import AuditConfig

JUDGE_INSTRUCTIONS = (
    "You audit training data for a vision-language model that answers questions about images by "
    "reasoning and writing Python code that a sandbox runs (cropping and zooming, rotating, "
    "enhancing contrast, computing). Below are the question, the input image, the model's "
    "reasoning and code, what the sandbox returned for each code block (the images the code "
    "produced and/or the text it printed), and the model's final answer.\n"
    "Decide whether the sandbox's result supports the reasoning and helps answer the question: a "
    "crop shows the region the reasoning is about, a rotated image is upright, an enhanced image "
    "makes the target easier to see, a printed value is the one the reasoning and the answer "
    "use. An earlier attempt may fail or miss when a later one fixes it: judge the final result. "
    "Say no when the result is irrelevant, shows the wrong region, contradicts the reasoning, or "
    "the answer does not follow from it. Do not judge style.\n"
    "Reply with exactly one word: yes or no.")
JUDGE_QUESTION = ("Does the sandbox's result support the reasoning and help answer the question? "
                  "Reply yes or no.")


def judge_question(t: Trajectory, sample: Sample, root: Path, cfg: AuditConfig) -> list:
    """What the judge is shown, in order (`pipelines.core.judge` question parts): our instructions,
    the question (and options), the input image(s), each turn's reasoning, code and sandbox
    result with its images (the last `judge_max_images` produced), the final answer."""
    n = cfg.judge_text_chars
    parts: list = [JUDGE_INSTRUCTIONS, f"\n\nQuestion: {sample.question}"]
    options = parse_options((sample.meta or {}).get("options"))
    if options and not any(f"{k}. {v}" in sample.question for k, v in options.items()):
        parts.append("\nOptions: " + "; ".join(f"{k}. {v}" for k, v in options.items()))
    if sample.images:
        parts.append("\nInput image:" if len(sample.images) == 1 else f"\nInput images ({len(sample.images)}):")
        parts += [_judge_image(store_path(root, im.relpath), cfg.judge_image_side) for im in sample.images]
    else:
        parts.append("\n(The question has no image.)")
    produced = [(k, p) for k, turn in enumerate(t.turns) if turn.result is not None
                for p in turn.result.images]
    shown = set(produced[-cfg.judge_max_images:]) if cfg.judge_max_images > 0 else set()
    for k, turn in enumerate(t.turns):
        if turn.reasoning.strip():
            parts.append(f"\n\nReasoning:\n{_cut(turn.reasoning.strip(), n)}")
        if turn.code is None:
            continue
        parts.append(f"\n\nCode:\n```python\n{_cut(turn.code, n)}\n```\nSandbox result: ")
        r = turn.result
        if r is None:
            parts.append("(not executed)")
            continue
        if r.kind == "error":
            parts.append(f"error ({r.error_kind or 'error'}): {_cut(r.text, n)}")
            continue
        parts.append(f"printed:\n{_cut(r.text, n)}" if r.text.strip() else "printed nothing")
        if r.images:
            mine = [p for p in r.images if (k, p) in shown]
            parts.append(f"\nproduced {len(r.images)} image(s)"
                         + (f", {len(r.images) - len(mine)} not shown" if len(mine) < len(r.images) else "")
                         + (":" if mine else ""))
            for p in mine:
                parts.append(_judge_image(store_path(root, p), cfg.judge_image_side))
    parts.append(f"\n\nFinal answer: {_cut(t.answer, n)}\n\n{JUDGE_QUESTION}")
    return parts


def _judge_image(path: Path, side: int) -> bytes:
    """The image's bytes as stored, or re-encoded (JPEG) at `side` px when larger."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        if max(im.size) <= side and im.format in ("JPEG", "PNG", "WEBP", "GIF"):
            return data
        im.thumbnail((side, side), Image.LANCZOS)
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _cut(text: str | None, n: int) -> str:
    text = text or ""
    return text if len(text) <= n else text[:n] + f" [... {len(text) - n} more characters]"


