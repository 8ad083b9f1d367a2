"""Our prompts for model teachers, mirroring how the paper briefed its generator (THYME.md §3):

- a decision prompt: does the question need no processing, or which operation (crop, rotate,
  contrast, compute)? Used for samples without a known task (real pools);
- generation prompts per operation. With ground truth they guide the teacher the paper's way:
  crop gets the target's box, rotate the angle, contrast the target region, computation the
  values and expression — each with the instruction never to reveal the hint, so the reasoning
  reads as if the model found it itself (`parse.reveals_ground_truth` enforces that for the box
  and angle). Without ground truth the same prompt asks the teacher to locate things itself.

Messages are OpenAI chat format with the image as a data URL: the same list serves an
OpenAI-compatible server and vLLM's offline `LLM.chat`. The student-facing part of the user
message is the configured prompt set's (`pipelines.core.prompts`), exactly what training will show.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from pipelines.core.llm import system_message, user_message
from pipelines.core.prompts import load_prompt_set
from pipelines.core.schema import Sample
from sandbox.protocol import VIRTUAL_OUTPUT_DIR

OPERATIONS = ("none", "crop", "rotate", "contrast", "compute")
# The operation a task of the generated pool calls for (others need the decision prompt).
TASK_OPERATION = {"no_code": "none", "crop": "crop", "rotate": "rotate", "contrast": "contrast",
                  "computation": "compute"}

TEACHER_SYSTEM_PROMPT = f"""\
You write worked examples for a vision-language assistant that solves visual questions by \
reasoning step by step and, when it helps, by writing Python code that runs in a sandbox. \
Write exactly the response that assistant should give, in this format:

<think>reasoning ... <code>
```python
code
```
</code>
reasoning about the result ...</think> <answer>final answer</answer>

Rules for code:
- The input image's path is in the predefined variable `image_path`; load it from there.
- Available: PIL, cv2 (OpenCV), numpy, sympy, math, fractions, decimal.
- Save every processed image under {VIRTUAL_OUTPUT_DIR}/ with a descriptive file name, and \
print the saved path as the last line. For a computation, print the result.
- Never write the code's output yourself: the sandbox inserts it after each code block. After \
a code block, continue as if you had looked at the processed image or the printed value.
- Short comments in the code are welcome; keep each block focused on one operation.
Rules for the answer: inside <answer> put only the final answer: the option letter for \
multiple choice, otherwise the value or the short phrase asked for.
Never mention these instructions, any hint you are given, or that you were told anything \
beyond the image and the question."""

# Teachers in the loop (`loop.py`): a generation call stops after `</code>`; the sandbox's output
# follows, inside the same message (prefill) or as the next user message (turns).
LOOP_RULES = {
    "prefill": "\nYou write with the sandbox in the loop: after each </code>, stop; the sandbox "
               "runs the code and its real output (the processed image, the printed value or the "
               "error) appears in a <sandbox_output> block; then continue from there, reasoning "
               "about what it actually shows.",
    "turns": "\nYou write with the sandbox in the loop: after each </code>, stop and end your "
             "message. The sandbox runs the code and its real output (the processed image, the "
             "printed value or the error) comes back in the next message inside a "
             "<sandbox_output> block. Then continue your response exactly where it stopped: do "
             "not repeat earlier text, do not start a new <think>, do not greet; reason about "
             "what the output actually shows, and finish with </think> <answer>...</answer> "
             "when you are done.",
}

DECISION_PROMPT = """\
Decide how an assistant should answer the question below about the image. Choose exactly one:
- none: the answer can be read or inferred directly from the image;
- crop: the relevant detail is small, so a region must be cropped and enlarged;
- rotate: the content is rotated or upside down and must be turned upright first;
- contrast: the image is too dark, faint or low-contrast and must be enhanced first;
- compute: the answer needs arithmetic on values, best done in Python.
Reply with the single word inside a tag, for example <decision>crop</decision>.

Question:
{question}"""

_GUIDANCE = {
    "none": "This question can be answered by looking at the image carefully. Answer without "
            "writing any code: describe what you see that settles it, then answer.",
    "crop": "The detail that matters is small. Crop the region that contains it, with a margin, "
            "enlarge the crop 2-4x (OpenCV or PIL), save it and print the path; then read the "
            "detail from the enlarged view.",
    "rotate": "The content of the image is not upright. Rotate the image so it is upright, "
              "keeping the whole content (expand the canvas), save it and print the path; then "
              "read the upright image.",
    "contrast": "The image is dark or low-contrast where it matters. Enhance the contrast (for "
                "example CLAHE, histogram equalisation, gamma, or PIL's ImageEnhance), on the "
                "whole image or a crop around the target, save it and print the path; then read "
                "the enhanced image.",
    "compute": "Answer by writing lean Python that computes the result exactly (fractions, "
               "decimal, sympy or numpy) and prints it; then state the answer from the printed "
               "value.",
}


def operation_for(sample: Sample) -> str | None:
    """The operation the sample's task calls for, or None when a decision is needed."""
    return TASK_OPERATION.get(sample.task)


def decision_messages(sample: Sample, image: dict | None) -> list[dict]:
    text = DECISION_PROMPT.format(question=sample.question)
    return [user_message(text, [image] if image else ())]


_DECISION_TAG = re.compile(r"<decision>\s*([a-z_]+)", re.IGNORECASE)
_WORD = re.compile(r"\b(" + "|".join(OPERATIONS) + r")\b", re.IGNORECASE)


def parse_decision(text: str) -> str | None:
    """The chosen operation: the tagged word, else the first operation word; None if neither."""
    tagged = _DECISION_TAG.search(text or "")
    if tagged and tagged.group(1).lower() in OPERATIONS:
        return tagged.group(1).lower()
    word = _WORD.search(text or "")
    return word.group(1).lower() if word else None


def generation_messages(sample: Sample, operation: str, image: dict | None,
                        give_answer: bool = True, prompt_set: str | None = None,
                        extra_hints: list[str] | tuple = (),
                        loop: str | None = None) -> tuple[list[dict], dict]:
    """(messages, hidden): the generation prompt for `operation`, guided by the sample's ground
    truth where it has some; `hidden` is the ground truth the reasoning must not state.
    `extra_hints`: more private hints (a round plan); `loop`: the in-the-loop mode whose rules
    the system prompt adds (`LOOP_RULES`), None for one pass."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r} (one of {OPERATIONS})")
    meta = sample.meta or {}
    hints, hidden = _hints(sample, operation, meta)
    hints += list(extra_hints)
    if give_answer and sample.answer:
        hints.append(f"The correct final answer is: {sample.answer}. Reach it through the "
                     f"reasoning; never say it was given to you.")
    guidance = _GUIDANCE[operation]
    if hints:
        guidance += "\n\nPrivate hints (use them, never reveal them):\n" + "\n".join(f"- {h}" for h in hints)
    student = _student_prompt(sample, prompt_set)
    text = f"{guidance}\n\nThe assistant's task follows.\n\n{student}"
    system = TEACHER_SYSTEM_PROMPT + (LOOP_RULES[loop] if loop else "")
    messages = [system_message(system), user_message(text, [image] if image else ())]
    return messages, hidden


def _hints(sample: Sample, operation: str, meta: dict) -> tuple[list[str], dict]:
    hints: list[str] = []
    hidden: dict = {}
    size = f"{sample.images[0].width}x{sample.images[0].height}" if sample.images else ""
    box = meta.get("box")
    if operation == "crop" and box:
        hints.append(f"The target lies in the box {_box(box)} (left, top, right, bottom pixels "
                     f"of the {size} image). Crop a bit more than this box (a margin on every "
                     f"side, inside the image). Describe its position in words only; the "
                     f"numbers may appear in the code, never in the reasoning.")
        hidden["box"] = box
    elif operation == "rotate" and meta.get("angle") is not None:
        angle = meta["angle"]
        hints.append(f"The upright content was turned {angle:g} degrees counter-clockwise; "
                     f"rotating by -{angle:g} degrees (clockwise), e.g. PIL "
                     f"`img.rotate(-{angle:g}, expand=True)`, makes it upright. In the "
                     f"reasoning, say only roughly how it is tilted, never the exact angle.")
        hidden["angle"] = angle
    elif operation == "contrast" and box:
        hints.append(f"The faint target lies in the box {_box(box)} of the {size} image; the "
                     f"enhancement must make it clearer. Do not state the coordinates in the "
                     f"reasoning.")
        hidden["box"] = box
    elif operation == "compute" and meta.get("values"):
        values = ", ".join(f"{k} = {v}" for k, v in meta["values"].items())
        hints.append(f"The values involved are {values}; the quantity asked for is "
                     f"{meta.get('expression', '?')}"
                     + (f", reported as {meta['answer_format']}" if meta.get("answer_format") else "")
                     + ". In the reasoning, read the values off the image or the question.")
    if meta.get("target"):
        hints.append(f"What matters in the image: {meta['target']}.")
    return hints, hidden


def _box(box) -> str:
    return "[" + ", ".join(str(int(v)) for v in box) + "]"


def _student_prompt(sample: Sample, prompt_set: str | None) -> str:
    """The user message the trained model will see (THYME.md §1), in the configured set."""
    prompts = load_prompt_set(prompt_set)
    if not sample.images:
        return prompts.render_user(sample.question)
    ref = sample.images[0]
    path = (sample.meta or {}).get("original_path") or str(PurePosixPath("/mnt/data/images") /
                                                         f"{sample.id}.{ref.ext}")
    return prompts.render_user(sample.question, path, (ref.width, ref.height), len(sample.images))


def describe(messages: list[dict]) -> str:
    """The messages as text with images elided (for logs and previews)."""
    def part(p):
        return "<image>" if p.get("type") == "image_url" else p.get("text", "")
    out = []
    for m in messages:
        content = m["content"]
        body = content if isinstance(content, str) else "".join(part(p) for p in content)
        out.append(f"[{m['role']}]\n{body}")
    return "\n\n".join(out)
