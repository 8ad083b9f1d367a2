"""Thyme rows rendered into a model's chat, with labels that train only the model's own writing.

A Thyme SFT row (the published `thyme` encoding, THYME.md §3) has `image` (the input image first,
then each sandbox-produced image in order; base64 text, bytes or `{"bytes", "path"}`), `question`
(with an `<image>` placeholder) and `response` (the assistant message in the tag protocol, each
sandbox image an `<image>` inside `<sandbox_output>`). Text-only rows have no images and no
placeholder.

The chat is system (configurable), user (the question, its `<image>` where it stands), assistant
(the full response). Each `<image>` becomes an image part of its message, so the model's own chat
template writes its vision placeholder, in order. Labels (`-100` = no loss) mask:
  - everything before the assistant's text and after its end-of-turn token (system, user, the
    template's role headers);
  - every `<sandbox_output>…</sandbox_output>` span, tags, text and image tokens included
    (`mask_sandbox_outputs`; the paper's ablation: without it the model learns to hallucinate
    sandbox results);
  - image tokens, always;
  - with `train_last_round_only`, all rounds before the last: a round is one code block with the
    reasoning that leads to it and its output, the final answer belongs to the last round, so
    everything up to the end of the second-to-last sandbox output is masked.

Tokenisation happens piece by piece at each mask boundary: a token never straddles the model's
writing and the sandbox's, just as at inference, where generation stops at `</code>` and the
sandbox output is appended as separate tokens.
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass, field

from PIL import Image

from pipelines.core.prompts import DEFAULT_SYSTEM_PROMPT, content_parts
from sandbox.protocol import IMAGE_TOKEN, OUTPUT_CLOSE, OUTPUT_OPEN

IGNORE = -100  # the label of a token that takes no loss (the transformers/PyTorch convention)
_OUTPUT_TAG = re.compile(f"{re.escape(OUTPUT_OPEN)}|{re.escape(OUTPUT_CLOSE)}")


class RowError(ValueError):
    """A row that cannot be rendered; `reason` is a short code for counting."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


# ------------------------------------------------------------------ images

def decode_image(item) -> Image.Image:
    """An RGB PIL image from base64 text, raw bytes, an HF `{"bytes", "path"}` dict or a PIL image."""
    if isinstance(item, Image.Image):
        img = item
    else:
        if isinstance(item, dict):
            item = item.get("bytes") or item.get("path")
            if not item:
                raise RowError("bad_image", "an image entry has neither bytes nor path")
            if isinstance(item, str):
                return decode_image(Image.open(item))
        if isinstance(item, str):
            if item.startswith("data:image/"):
                item = item.split(",", 1)[1]
            try:
                item = base64.b64decode(item, validate=False)
            except ValueError as exc:
                raise RowError("bad_image", f"image is not valid base64 ({exc})") from None
        if not isinstance(item, (bytes, bytearray)):
            raise RowError("bad_image", f"image of type {type(item).__name__}")
        try:
            img = Image.open(io.BytesIO(item))
            img.load()
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds
            raise RowError("bad_image", f"image does not decode ({exc})") from None
    if img.mode != "RGB":
        if img.mode in ("RGBA", "LA", "P"):  # flatten transparency on white, as the original
            img = img.convert("RGBA")
            white = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(white, img)
        img = img.convert("RGB")
    return img


# ------------------------------------------------------------------ messages

def thyme_messages(question: str, response: str | None = None,
                   system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> list[dict]:
    """The chat of a Thyme row: system (omitted when `system_prompt` is empty or None: the
    template's default applies), user, and the assistant's response when given."""
    messages = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}] \
        if system_prompt else []
    messages.append({"role": "user", "content": content_parts(question)})
    if response is not None:
        messages.append({"role": "assistant", "content": content_parts(response)})
    return messages


def output_spans(text: str, start: int = 0) -> list[tuple[int, int]]:
    """(start, end) of each `<sandbox_output>…</sandbox_output>` in `text[start:]`, tags included.
    Unbalanced or nested tags raise RowError."""
    spans, opened = [], None
    for m in _OUTPUT_TAG.finditer(text, start):
        if m.group() == OUTPUT_OPEN:
            if opened is not None:
                raise RowError("unbalanced_tags", f"{OUTPUT_OPEN} at char {m.start()} opens "
                               f"inside another sandbox output")
            opened = m.start()
        else:
            if opened is None:
                raise RowError("unbalanced_tags", f"{OUTPUT_CLOSE} at char {m.start()} closes "
                               f"nothing")
            spans.append((opened, m.end()))
            opened = None
    if opened is not None:
        raise RowError("unbalanced_tags", f"{OUTPUT_OPEN} at char {opened} is never closed")
    return spans


# ------------------------------------------------------------------ encoding

@dataclass
class Encoded:
    """One row as model inputs: token ids and labels (image tokens expanded), its images."""
    input_ids: list[int]
    labels: list[int]
    pixel_values: object = None                  # the row's image patches (a tensor) or None
    image_grid_thw: list = field(default_factory=list)  # (t, h, w) patches per image, in order

    @property
    def trainable(self) -> int:
        return sum(label != IGNORE for label in self.labels)


class ThymeChat:
    """Renders and encodes Thyme rows for one processor (a Qwen2.5-VL-style `AutoProcessor`)."""

    def __init__(self, processor, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
                 mask_sandbox_outputs: bool = True, train_last_round_only: bool = False):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.system_prompt = system_prompt
        self.mask_sandbox_outputs = mask_sandbox_outputs
        self.train_last_round_only = train_last_round_only
        self.image_token = processor.image_token
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self.end_of_turn = self.tokenizer.eos_token
        if self.image_token_id is None or self.end_of_turn is None:
            raise ValueError("the processor's tokenizer lacks an image token or an eos token")

    # -- text and label spans

    def render(self, question: str, response: str) -> tuple[str, list[tuple[int, int, bool]]]:
        """The chat text (one vision placeholder per image) and its pieces as
        (start, end, trainable), covering the text in order."""
        messages = thyme_messages(question, response, self.system_prompt)
        text = self.processor.apply_chat_template(messages, tokenize=False)
        prompt = self.processor.apply_chat_template(messages[:-1], tokenize=False,
                                                    add_generation_prompt=True)
        if not text.startswith(prompt):
            raise ValueError("the chat template renders the conversation and its prompt "
                             "differently: cannot locate the assistant's text")
        start = len(prompt)
        end = text.rfind(self.end_of_turn)
        if end < start:
            raise ValueError(f"the chat template does not close the assistant turn with "
                             f"{self.end_of_turn!r}")
        end += len(self.end_of_turn)  # the end-of-turn token is the model's to write

        masked = []  # spans inside the assistant's text that take no loss
        spans = output_spans(text[:end], start)
        if self.mask_sandbox_outputs:
            masked += spans
        if self.train_last_round_only and len(spans) >= 2:
            masked.append((start, spans[-2][1]))
        pieces, pos = [(0, start, False)], start
        for a, b in _merge(masked):
            if a > pos:
                pieces.append((pos, a, True))
            pieces.append((a, b, False))
            pos = b
        if end > pos:
            pieces.append((pos, end, True))
        if len(text) > end:
            pieces.append((end, len(text), False))
        return text, pieces

    def tokens(self, question: str, response: str) -> tuple[list[int], list[int]]:
        """Token ids and labels before image expansion (one image token per image)."""
        text, pieces = self.render(question, response)
        ids, labels = [], []
        for a, b, trainable in pieces:
            piece = self.tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if trainable else [IGNORE] * len(piece)
        return ids, labels

    def _expand(self, ids: list[int], labels: list[int], counts: list[int], origin: str):
        where = [i for i, t in enumerate(ids) if t == self.image_token_id]
        if len(where) != len(counts):
            raise RowError("image_count", f"{origin}: {len(where)} <image> placeholders but "
                           f"{len(counts)} images")
        out_ids, out_labels, prev = [], [], 0
        for i, n in zip(where, counts, strict=True):
            out_ids += ids[prev:i] + [self.image_token_id] * n
            out_labels += labels[prev:i] + [IGNORE] * n  # image tokens are never trained
            prev = i + 1
        return out_ids + ids[prev:], out_labels + labels[prev:]

    def _check_placeholders(self, row: dict, n_images: int, origin: str) -> None:
        found = row["question"].count(IMAGE_TOKEN) + row["response"].count(IMAGE_TOKEN)
        if found != n_images:
            raise RowError("image_count", f"{origin}: {found} <image> placeholders in question "
                           f"and response but {n_images} images")

    def length(self, row: dict) -> int:
        """The row's token count, images included, computed from image sizes (no pixels)."""
        origin = row.get("_origin", "row")
        items = row.get("image") or []
        self._check_placeholders(row, len(items), origin)
        sizes = [decode_header(item) for item in items]
        ip = self.processor.image_processor
        counts = [ip.get_number_of_image_patches(h, w) // ip.merge_size ** 2 for w, h in sizes]
        ids, labels = self.tokens(row["question"], row["response"])
        return len(self._expand(ids, labels, counts, origin)[0])

    def encode(self, row: dict) -> Encoded:
        """One row as ids, labels and processed images. Raises RowError on a malformed row."""
        origin = row.get("_origin", "row")
        items = row.get("image") or []
        self._check_placeholders(row, len(items), origin)
        pixels, grids, counts = None, [], []
        if items:
            ip = self.processor.image_processor
            vision = ip(images=[decode_image(item) for item in items], return_tensors="pt")
            pixels, grids = vision["pixel_values"], vision["image_grid_thw"].tolist()
            counts = [t * h * w // ip.merge_size ** 2 for t, h, w in grids]
        ids, labels = self.tokens(row["question"], row["response"])
        ids, labels = self._expand(ids, labels, counts, origin)
        return Encoded(ids, labels, pixels, grids)


def decode_header(item) -> tuple[int, int]:
    """(width, height) of an encoded image, reading its header only."""
    if isinstance(item, Image.Image):
        return item.size
    if isinstance(item, dict):
        data = item.get("bytes")
        if not data:
            return decode_image(item).size
        item = data
    if isinstance(item, str):
        item = base64.b64decode(item.split(",", 1)[1] if item.startswith("data:image/") else item)
    try:
        with Image.open(io.BytesIO(item)) as img:
            return img.size
    except Exception as exc:  # noqa: BLE001
        raise RowError("bad_image", f"image does not decode ({exc})") from None


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


# ------------------------------------------------------------------ collation

class ThymeCollator:
    """Batches Thyme rows for a Qwen2.5-VL-style model: right-padded ids, labels, attention mask,
    the multimodal token types (which the model's 3D positions need), and the batch's images.
    Rows with and without images mix freely. Rows must already fit `max_length` (the dataset
    preparation drops and counts longer ones); a longer row here is an error, never cut."""

    def __init__(self, chat: ThymeChat, max_length: int | None = None):
        self.chat = chat
        self.max_length = max_length
        self.pad_id = chat.tokenizer.pad_token_id

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        encoded = [self.chat.encode(row) for row in rows]
        for row, enc in zip(rows, encoded, strict=True):
            if self.max_length and len(enc.input_ids) > self.max_length:
                raise ValueError(f"{row.get('_origin', 'row')}: {len(enc.input_ids)} tokens > "
                                 f"max_length {self.max_length}; drop long rows before "
                                 f"collating (thyme_train.sft does)")
        width = max(len(e.input_ids) for e in encoded)
        ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, e in enumerate(encoded):
            n = len(e.input_ids)
            ids[i, :n] = torch.tensor(e.input_ids)
            labels[i, :n] = torch.tensor(e.labels)
            attention[i, :n] = 1
        batch = {"input_ids": ids, "attention_mask": attention, "labels": labels,
                 "mm_token_type_ids": (ids == self.chat.image_token_id).long() * attention}
        with_images = [e for e in encoded if e.image_grid_thw]
        if with_images:  # patches of all the batch's images, in order, as the model expects
            batch["pixel_values"] = torch.cat([e.pixel_values for e in with_images])
            batch["image_grid_thw"] = torch.tensor(
                [g for e in with_images for g in e.image_grid_thw], dtype=torch.long)
        return batch
