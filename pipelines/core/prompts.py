"""Prompt rendering and parsing: the one module that knows the Thyme prompt text (THYME.md §1).

The system prompt is configuration: users of the released checkpoints pass the original text.
"""

from __future__ import annotations

import re

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant that solves problems step by step. You may write Python code "
    "to process the image (for example crop a region of interest and zoom in, resize, rotate, or "
    "adjust contrast) or to compute something. The code runs in a secure sandbox and its output "
    "is returned to you inside <sandbox_output></sandbox_output>. Wrap code in <code> and a "
    "```python fence; at the end, print the path of the processed image or the result."
)
OUTPUT_FORMAT = (
    "### **Output Format (strict adherence required):**\n\n"
    "<think>Your reasoning, with any code blocks and their sandbox outputs.</think>\n"
    "<answer>Your final answer.</answer>"
)

_PATH = re.compile(r'(User Image Path:\*{0,2}\s*")([^"]*)(")')
_SIZE = re.compile(r'(User Image Size:\*{0,2}\s*")(\d+)\s*x\s*(\d+)(")')
_TEMPLATE_START = re.compile(r"\n*#{2,3}\s*\**\s*User Image Path", re.IGNORECASE)
_IMAGE_TOKENS = re.compile(r"<image>\s*")


def render_user(question: str, image_path: str | None = None,
                image_size: tuple[int, int] | None = None) -> str:
    """The Thyme user message: `<image>`, the question, the image's path and size, the format."""
    if image_path is None:
        return f"{question}\n\n{OUTPUT_FORMAT}"
    width, height = image_size
    return (f"<image>\n{question}\n\n### User Image Path:** \"{image_path}\"\n"
            f"### User Image Size:** \"{width}x{height}\"\n\n{OUTPUT_FORMAT}")


def parse_user(text: str) -> tuple[str, dict]:
    """The bare question and {original_path, original_size} from a Thyme user message."""
    meta = {}
    if m := _PATH.search(text):
        meta["original_path"] = m.group(2)
    if m := _SIZE.search(text):
        meta["original_size"] = [int(m.group(2)), int(m.group(3))]
    cut = _TEMPLATE_START.search(text)
    question = text[: cut.start()] if cut else text
    return strip_image_tokens(question), meta


def set_user_image(text: str, image_path: str | None = None,
                   image_size: tuple[int, int] | None = None) -> str:
    """A Thyme user message with its User Image Path and/or Size lines replaced, the rest kept."""
    if image_path is not None:
        text = _PATH.sub(lambda m: f"{m.group(1)}{image_path}{m.group(3)}", text, count=1)
    if image_size is not None:
        text = _SIZE.sub(lambda m: f"{m.group(1)}{image_size[0]}x{image_size[1]}{m.group(4)}",
                         text, count=1)
    return text


def strip_image_tokens(text: str) -> str:
    return _IMAGE_TOKENS.sub("", text).strip()
