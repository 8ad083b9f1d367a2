"""computation without an image: multi-digit arithmetic (a product, a sum of three numbers, a
product plus a number) asked in plain words. No small model computes a four-digit product in its
head, but any model can copy the numbers into code and the printed result into its answer: the
task that shows whether a model has learned to delegate to the sandbox. Open questions only (the
answer is the number itself), `meta` as for every computation (`values`, `expression`,
`answer_format` "integer"); the kind names the operation."""

from __future__ import annotations

from pipelines.pool.generate.built import Built
from pipelines.pool.generate.numbers import finish_computation
from pipelines.pool.generate.rand import pick, randint

_PRODUCT = ("What is {a} × {b}?", "Compute {a} × {b}.", "What is {a} times {b}?",
            "Calculate {a} * {b}.", "What is the product of {a} and {b}?")
_SUM = ("What is {a} + {b} + {c}?", "Compute {a} + {b} + {c}.", "Add {a}, {b} and {c}.",
        "What is the sum of {a}, {b} and {c}?")
_PRODUCT_PLUS = ("What is {a} × {b} + {c}?", "Compute {a} * {b} + {c}.",
                 "Multiply {a} by {b}, then add {c}. What is the result?")


def _digits(rng, lo: int, hi: int) -> int:
    """A number with between lo and hi digits (each length equally likely)."""
    n = randint(rng, lo, hi)
    return randint(rng, 10 ** (n - 1), 10 ** n - 1)


def build_arithmetic(rng) -> Built:
    kind = pick(rng, ("product", "sum", "product_plus"))
    if kind == "product":
        values = {"a": _digits(rng, 3, 4), "b": _digits(rng, 2, 3)}
        expression, phrasing = "a * b", _PRODUCT
    elif kind == "sum":
        values = {"a": _digits(rng, 3, 5), "b": _digits(rng, 3, 5), "c": _digits(rng, 3, 5)}
        expression, phrasing = "a + b + c", _SUM
    else:
        values = {"a": _digits(rng, 2, 3), "b": _digits(rng, 2, 3), "c": _digits(rng, 2, 4)}
        expression, phrasing = "a * b + c", _PRODUCT_PLUS
    question = pick(rng, phrasing).format(**values)
    answer = finish_computation(values, expression, "integer")
    meta = {"values": values, "expression": expression, "answer_format": "integer"}
    return Built("computation", kind, question, answer, [], meta, multiple_choice=False)
