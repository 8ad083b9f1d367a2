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


# Digits per operand (lo, hi) by kind: `arithmetic` and `arithmetic_small` (fewer digits to
# copy, products still far beyond what a tiny model computes in its head: 3 digits x 2 digits).
_SIZES = {
    "arithmetic": {"product": ((3, 4), (2, 3)), "sum": ((3, 5),) * 3,
                   "product_plus": ((2, 3), (2, 3), (2, 4))},
    "arithmetic_small": {"product": ((3, 3), (2, 2)), "sum": ((3, 3),) * 3,
                         "product_plus": ((2, 2), (2, 2), (2, 3))},
}
_FORMS = {"product": ("a * b", _PRODUCT), "sum": ("a + b + c", _SUM),
          "product_plus": ("a * b + c", _PRODUCT_PLUS)}


def build_arithmetic(rng, size: str = "arithmetic") -> Built:
    kind = pick(rng, ("product", "sum", "product_plus"))
    sizes = _SIZES[size][kind]
    values = {name: _digits(rng, lo, hi) for name, (lo, hi) in zip("abc"[:len(sizes)], sizes, strict=True)}
    expression, phrasing = _FORMS[kind]
    question = pick(rng, phrasing).format(**values)
    answer = finish_computation(values, expression, "integer")
    meta = {"values": values, "expression": expression, "answer_format": "integer"}
    return Built("computation", kind, question, answer, [], meta, multiple_choice=False)


def build_arithmetic_small(rng) -> Built:
    """The same task with fewer digits (3x2-digit products, sums of three 3-digit numbers)."""
    return build_arithmetic(rng, "arithmetic_small")


# Three-digit factors whose product always has six digits (317 x 317 = 100,489).
_FIXED_LO, _FIXED_HI = 317, 999


def build_arithmetic_fixed(rng) -> Built:
    """One shape only: "What is a × b?" with three-digit factors and a six-digit product, so every
    number sits at the same place in every question (and, with the template teacher's fixed
    wording, in every response): copying becomes a constant-offset lookup, the easiest copy a
    small transformer learns, while the product stays far beyond what it computes in its head."""
    values = {"a": randint(rng, _FIXED_LO, _FIXED_HI), "b": randint(rng, _FIXED_LO, _FIXED_HI)}
    question = _PRODUCT[0].format(**values)
    answer = finish_computation(values, "a * b", "integer")
    meta = {"values": values, "expression": "a * b", "answer_format": "integer"}
    return Built("computation", "product", question, answer, [], meta, multiple_choice=False)
