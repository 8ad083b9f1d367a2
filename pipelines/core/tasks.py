"""Which of the paper's tasks (THYME.md §3) a trajectory performs, read from its code and what
the code returned: the one rule the pool readers (a released Thyme-SFT response) and the audit
(a real pool's trajectories, whose samples carry task `unknown`) share.

    infer_task(codes, outputs) -> "no_code" | "computation" | "rotate" | "contrast" | "crop" | "real_world"
    infer_task_from_response(response) -> the same, from a response in the tag protocol

- no code: `no_code`;
- the code's last output is printed text: `computation` (a value was computed, whatever it read
  or produced before);
- it produced an image: `rotate` (rotation calls), else `contrast` (enhancement calls, also on a
  crop), else `crop` (PIL `crop`, numpy slicing of two axes), else `real_world` (another image
  operation: resize, draw, filter);
- outputs unknown (code never run): the same keywords decide, then `real_world` when the code
  opens an image, else `computation`.
"""

from __future__ import annotations

import re

from sandbox.protocol import CODE_CLOSE, IMAGE_TOKEN, OUTPUT_CLOSE, OUTPUT_OPEN, code_blocks

_ROTATE = ("rotate", "warpaffine", "rot90", "transpose(image.", "image.transpose.")
_CONTRAST = ("clahe", "equalizehist", "imageenhance", "contrast", "gamma", "autocontrast",
             "convertscaleabs", "percentile", "normalize(")
_SLICE_2D = re.compile(r"\[\s*[\w.+\-*/() ]*:\s*[\w.+\-*/() ]*,\s*[\w.+\-*/() ]*:\s*[\w.+\-*/() ]*")
_OPENS_IMAGE = ("imread", "image.open")
_OUTPUT_AFTER_CODE = re.compile(re.escape(CODE_CLOSE) + r"\s*" + re.escape(OUTPUT_OPEN) + r"(.*?)"
                                + re.escape(OUTPUT_CLOSE), re.DOTALL | re.IGNORECASE)


def _image_operation(code: str) -> str | None:
    lowered = code.lower()
    if any(k in lowered for k in _ROTATE):
        return "rotate"
    if any(k in lowered for k in _CONTRAST):
        return "contrast"
    if ".crop(" in lowered or _SLICE_2D.search(code):
        return "crop"
    return None


def infer_task(codes: list[str], outputs: list[str | None]) -> str:
    """The task of a trajectory from its code blocks and, per block, what it returned: "image",
    "text", "error" or None (not run). Errors are ignored (a failed first try in an
    error-correction trajectory); the last output that is not an error decides."""
    codes = [c for c in codes if c and c.strip()]
    if not codes:
        return "no_code"
    code = "\n".join(codes)
    ran = [o for o in outputs if o in ("image", "text")]
    if ran and ran[-1] == "text":
        return "computation"
    operation = _image_operation(code)
    if ran:
        return operation or "real_world"
    if operation:
        return operation
    return "real_world" if any(k in code.lower() for k in _OPENS_IMAGE) else "computation"


def infer_task_from_response(response: str) -> str:
    """`infer_task` on a response in the tag protocol (a released Thyme-SFT row): each code
    block's output is the `<sandbox_output>` right after it (images when it holds `<image>`)."""
    codes = code_blocks(response or "")
    outputs: list[str | None] = [m.group(1) for m in _OUTPUT_AFTER_CODE.finditer(response or "")]
    kinds = [("image" if IMAGE_TOKEN in o else "text") for o in outputs]
    if len(kinds) != len(codes):        # a block without its output: fall back to the code alone
        kinds = []
    return infer_task(codes, kinds)
