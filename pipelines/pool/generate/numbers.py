"""Exact answers for the computation tasks: an expression over named values is evaluated as a
fraction (sympy), formatted as "integer", "fraction" or "decimal:N" (rounded half up; a value that
lands exactly on a rounding tie is rejected so the builder draws again), and perturbed into
plausible multiple-choice distractors."""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import sympy

from pipelines.pool.generate.rand import pick


def finish_computation(values, expression, fmt) -> str | None:
    """The answer text of `expression` over `values` in `fmt`; None on a tie (draw again)."""
    value = _evaluate(expression, values)
    if _is_tie(value, fmt):
        return None
    return _format(value, fmt)


def _evaluate(expression: str, values: dict) -> Fraction:
    local = {name: sympy.Rational(str(v)) for name, v in values.items()}
    result = sympy.sympify(expression, locals=local)
    if not result.is_Rational:
        raise ValueError(f"{expression!r} is not rational: {result}")
    return Fraction(int(result.p), int(result.q))


def _is_tie(value: Fraction, fmt: str) -> bool:
    if not fmt.startswith("decimal:"):
        return False
    scaled = value * 10 ** int(fmt.split(":")[1]) * 2
    return scaled.denominator == 1 and scaled.numerator % 2 == 1


def _format(value: Fraction, fmt: str) -> str:
    if fmt == "integer":
        if value.denominator != 1:
            raise ValueError(f"{value} is not an integer")
        return str(value.numerator)
    if fmt == "fraction":
        return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    places = int(fmt.split(":")[1])
    n = math.floor(value * 10 ** places + Fraction(1, 2))        # round half up
    sign, n = ("-" if n < 0 else ""), abs(n)
    if places == 0:
        return f"{sign}{n}"
    whole, frac = divmod(n, 10 ** places)
    return f"{sign}{whole}.{frac:0{places}d}"


def numeric_perturb(fmt: str) -> Callable:
    def perturb(rng, answer: str) -> str:
        if fmt == "fraction" and "/" in answer:
            p, q = (int(t) for t in answer.split("/"))
            p2, q2 = (p + pick(rng, (-1, 1, 2)), q) if rng.random() < 0.5 else (p, q + pick(rng, (-1, 1, 2)))
            return _format(Fraction(max(p2, 1), max(q2, 2)), fmt)
        value = Fraction(answer)
        if rng.random() < 0.5:
            step = Fraction(1) if fmt in ("integer", "fraction") else Fraction(1, 10 ** int(fmt.split(":")[1]))
            delta = pick(rng, (-3, -2, -1, 1, 2, 3, 10, -10)) * step * max(1, int(abs(value) // 20) or 1)
            other = value + delta
        else:
            other = value * Fraction(pick(rng, (70, 80, 90, 110, 120, 125, 150)), 100)
        if fmt in ("integer", "fraction"):
            other = Fraction(round(other))
        if value >= 0 > other:
            other = -other
        return _format(other, "integer" if fmt == "fraction" else fmt)
    return perturb


def count_perturb(rng, answer: str) -> str:
    n = int(answer)
    return str(max(0, n + pick(rng, (-2, -1, 1, 2, 3))))
