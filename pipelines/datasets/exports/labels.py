"""What a framework's labels train, counted token by token (the exports' checks and docs use it).

    label_counts(input_ids, labels, tokenizer, image_token) -> LabelCounts

A token is a sandbox token when it lies between a `<sandbox_output>` token and the next
`</sandbox_output>` token (both included); an image token is the processor's image pad; tokens
after the last end-of-turn token (a template's trailing newline) are counted apart. The model's
own writing is every other labelled token. Counting needs the two tags to be single tokens (they
are in the tiny test tokenizer, which adds them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sandbox.protocol import OUTPUT_CLOSE, OUTPUT_OPEN

IGNORE = -100


@dataclass
class LabelCounts:
    tokens: int = 0
    labelled: int = 0
    sandbox_tokens: int = 0
    labelled_sandbox: int = 0       # must be 0
    image_tokens: int = 0
    labelled_image: int = 0         # must be 0
    label_mismatch: int = 0         # labelled positions whose label is not the token (must be 0)
    labelled_after_end: int = 0     # labelled tokens after the last end-of-turn token
    own: list[int] = field(default_factory=list)  # labelled tokens outside sandbox outputs, in order

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "labelled": self.labelled, "own_labelled": len(self.own),
                "sandbox_tokens": self.sandbox_tokens, "labelled_sandbox": self.labelled_sandbox,
                "image_tokens": self.image_tokens, "labelled_image": self.labelled_image,
                "label_mismatch": self.label_mismatch, "labelled_after_end": self.labelled_after_end}


def single_token(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"{text!r} is {len(ids)} tokens for this tokenizer: counting needs one")
    return ids[0]


def label_counts(input_ids, labels, tokenizer, image_token: str, end_of_turn: str = "<|im_end|>") -> LabelCounts:
    """Counts over one row (padding, if any, must carry IGNORE labels and is counted as tokens)."""
    open_id, close_id = single_token(tokenizer, OUTPUT_OPEN), single_token(tokenizer, OUTPUT_CLOSE)
    image_id, end_id = tokenizer.convert_tokens_to_ids(image_token), single_token(tokenizer, end_of_turn)
    input_ids, labels = [int(t) for t in input_ids], [int(lab) for lab in labels]
    end = max((i for i, t in enumerate(input_ids) if t == end_id), default=len(input_ids))
    out, inside = LabelCounts(), False
    for position, (token, label) in enumerate(zip(input_ids, labels, strict=True)):
        inside = inside or token == open_id
        out.tokens += 1
        out.sandbox_tokens += inside
        out.image_tokens += token == image_id
        if label != IGNORE:
            out.labelled += 1
            out.label_mismatch += label != token
            out.labelled_sandbox += inside
            out.labelled_image += token == image_id
            if position > end:
                out.labelled_after_end += 1
            elif not inside and token != image_id:
                out.own.append(token)
        if token == close_id:
            inside = False
    return out
