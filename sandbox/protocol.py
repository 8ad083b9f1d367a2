"""The Thyme tag protocol (THYME.md §1): the one place that knows the tags.

    <think> reasoning <code>```python ...```</code><sandbox_output>...</sandbox_output> ...
    </think> <answer>...</answer>
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sandbox.result import Result

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
CODE_OPEN, CODE_CLOSE = "<code>", "</code>"
OUTPUT_OPEN, OUTPUT_CLOSE = "<sandbox_output>", "</sandbox_output>"
IMAGE_TOKEN = "<image>"
# The fictitious directory model code saves into; the sandbox maps it to a real scratch dir.
VIRTUAL_OUTPUT_DIR = "/mnt/data/temp_processed_images"

_CODE_BLOCK = re.compile(r"<code>(.*?)</code>", re.IGNORECASE | re.DOTALL)
_FENCE = re.compile(r"^\s*```(?:\s*python)?[^\n]*\n?(.*?)\n?\s*```\s*$", re.IGNORECASE | re.DOTALL)
_LEADING_PYTHON = re.compile(r"^\s*python\s*\n", re.IGNORECASE)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)


def extract_code(text: str) -> str | None:
    """The code of the first `<code>` block, fences and a leading `python` line removed;
    None when the text has no complete code block."""
    match = _CODE_BLOCK.search(text)
    if match is None:
        return None
    body = match.group(1)
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    else:
        body = _LEADING_PYTHON.sub("", body, count=1)
    return body.strip("\n")


def code_blocks(text: str) -> list[str]:
    """The code of every complete `<code>` block, in order (as `extract_code` reads one)."""
    return [extract_code(m.group(0)) for m in _CODE_BLOCK.finditer(text)]


def extract_answer(text: str) -> str | None:
    """The first `<answer>…</answer>`, stripped; None when absent."""
    match = _ANSWER.search(text)
    return match.group(1).strip() if match else None


def output_block(images: int = 0, text: str = "", error: tuple[str, str] | None = None) -> str:
    """A `<sandbox_output>` block: one `<image>` per produced image, else the error the model
    should read, else the printed text."""
    if error is not None:
        body = f"Error ({error[0]}): {error[1]}"
    elif images:
        body = IMAGE_TOKEN * images
    else:
        body = text
    return f"{OUTPUT_OPEN}{body}{OUTPUT_CLOSE}"


def render_output(result: Result) -> str:
    """The `<sandbox_output>` block of a sandbox `Result`."""
    error = None if result.ok else (result.error.kind, result.error.message)
    return output_block(len(result.images), result.text or "", error)
