"""Numbers as answers are written: "74.6", "$1,234.50", "1 000", "3/4", "-5", "12%", "twenty-five",
"12 cm", "45°"; the values they denote (exact `Fraction`s) and their comparison within a tolerance, with
conversion between the common units. Shared by the answer cascade (pipelines.core.answers) and
the audit's checks of printed values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-+\u2212]?)(?:"
    r"(?P<num>\d+(?:\.\d+)?)\s*/\s*(?P<den>\d+(?:\.\d+)?)"
    r"|(?P<dec>(?:[1-9]\d{0,2}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+)"
    r")(?![\w])")
_WHOLE_NUMBER = re.compile(
    r"^\s*(?P<sign>[-+\u2212]?)\s*[$\u20ac\u00a3\u00a5]?\s*(?P<sign2>[-+\u2212]?)(?:"
    r"(?P<num>\d+(?:\.\d+)?)\s*/\s*(?P<den>\d+(?:\.\d+)?)"
    r"|(?P<dec>(?:[1-9]\d{0,2}(?:,\d{3})+|[1-9]\d{0,2}(?:[ \u00a0\u202f]\d{3})+|\d+)(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)"
    r")\s*%?\s*\.?\s*$")


def _to_fraction(m: re.Match) -> Fraction | None:
    signs = (m.group("sign") or "") + (m.groupdict().get("sign2") or "")
    negative = signs.count("-") + signs.count("\u2212") == 1
    try:
        if m.group("dec") is not None:
            value = Fraction(re.sub(r"[,\s]", "", m.group("dec")))
        else:
            den = Fraction(m.group("den"))
            if den == 0:
                return None
            value = Fraction(m.group("num")) / den
    except (ValueError, ZeroDivisionError):
        return None
    return -value if negative else value


def as_number(text: str) -> Fraction | None:
    """`text` as one number ("74.6", "$1,234.50", "3/4", "-5", "12%"), else None."""
    m = _WHOLE_NUMBER.match(text or "")
    return _to_fraction(m) if m else None


def numbers_in(text: str) -> list[Fraction]:
    """Every number written in `text`, in order."""
    return [v for m in _NUMBER.finditer(text or "") if (v := _to_fraction(m)) is not None]


def decimals(text: str) -> int:
    """Decimal places of the number `text` ends with ("0.67" -> 2)."""
    m = re.search(r"\d\.(\d+)\s*%?\s*\.?\s*$", (text or "").strip())
    return len(m.group(1)) if m else 0


def close(a: Fraction, b: Fraction, tol: float) -> bool:
    """|a - b| within `tol` relative to b (absolute when |b| < 1)."""
    return abs(a - b) <= Fraction(tol) * max(Fraction(1), abs(b))


def round_to(value: Fraction, places: int) -> Fraction:
    """`value` rounded half-up to `places` decimals."""
    q = Decimal(1).scaleb(-places)
    d = (Decimal(value.numerator) / Decimal(value.denominator)).quantize(q, rounding=ROUND_HALF_UP)
    return Fraction(d)


def format_number(v: Fraction) -> str:
    if v.denominator == 1:
        return str(v.numerator)
    as_float = float(v)
    if Fraction(repr(as_float)) == v:
        return repr(as_float)
    return f"{v} (~{as_float:.6g})"


# Units the number comparison converts between: name -> (dimension, factor to the base unit).
# Unknown unit words ("12 apples") are ignored; different dimensions never match.
_UNITS: dict[str, tuple[str, Fraction]] = {}
for _dim, _table in {
    "length": {"mm": "0.001", "millimeter": "0.001", "cm": "0.01", "centimeter": "0.01",
               "m": "1", "meter": "1", "metre": "1", "km": "1000", "kilometer": "1000",
               "in": "0.0254", "inch": "0.0254", "inche": "0.0254", "ft": "0.3048",
               "foot": "0.3048", "feet": "0.3048", "yd": "0.9144", "yard": "0.9144",
               "mi": "1609.344", "mile": "1609.344"},
    "mass": {"mg": "0.001", "milligram": "0.001", "g": "1", "gram": "1", "kg": "1000",
             "kilogram": "1000", "lb": "453.59237", "pound": "453.59237", "oz": "28.349523125",
             "ounce": "28.349523125"},
    "time": {"ms": "0.001", "millisecond": "0.001", "s": "1", "sec": "1", "second": "1",
             "min": "60", "minute": "60", "h": "3600", "hr": "3600", "hour": "3600",
             "day": "86400"},
    "volume": {"ml": "0.001", "milliliter": "0.001", "l": "1", "liter": "1", "litre": "1"},
    "angle": {"°": "1", "deg": "1", "degree": "1"},
    "percent": {"%": "1", "percent": "1", "per cent": "1"},
}.items():
    for _name, _factor in _table.items():
        _UNITS[_name] = (_dim, Fraction(_factor))

_UNIT_TOKEN = r"[A-Za-z\u00b5\u00b0\u00b2\u00b3]+(?:\^[23])?"
_QUANTITY = re.compile(
    r"^\s*(?P<sign>[-+\u2212]?)\s*[$\u20ac\u00a3\u00a5]?\s*(?P<sign2>[-+\u2212]?)(?:"
    r"(?P<num>\d+(?:\.\d+)?)\s*/\s*(?P<den>\d+(?:\.\d+)?)"
    r"|(?P<dec>(?:[1-9]\d{0,2}(?:,\d{3})+|[1-9]\d{0,2}(?:[ \u00a0\u202f]\d{3})+|\d+)(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)"
    rf")\s*(?P<unit>%|\u00b0\s*[CFcf]?|{_UNIT_TOKEN}(?:(?:\s*/\s*|\s+|\s*[*\u00b7]\s*){_UNIT_TOKEN}){{0,2}})?"
    r"\s*\.?\s*$")

_SMALL_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                  "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                  "seventeen", "eighteen", "nineteen"]
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_NUMBER_WORDS = re.compile(
    rf"^\s*(?:(?P<tens>{'|'.join(_TENS)})(?:[\s-]+(?P<unit>{'|'.join(_SMALL_NUMBERS[1:10])}))?"
    rf"|(?P<small>{'|'.join(_SMALL_NUMBERS)}))\b", re.IGNORECASE)


def _words_to_digits(text: str) -> str:
    """A leading English number word written as digits ("twenty-five cm" -> "25 cm")."""
    m = _NUMBER_WORDS.match(text)
    if not m:
        return text
    if m.group("small"):
        value = _SMALL_NUMBERS.index(m.group("small").lower())
    else:
        value = 10 * (2 + _TENS.index(m.group("tens").lower()))
        value += _SMALL_NUMBERS.index(m.group("unit").lower()) if m.group("unit") else 0
    return f"{value}{text[m.end():]}"


def unit_dimension(name: str | None) -> tuple[str, Fraction] | None:
    """(dimension, factor to its base unit) of a unit name ("cm" -> ("length", 0.01)), else None."""
    if not name:
        return None
    key = " ".join(name.split()).replace("\u00ba", "\u00b0")
    if key.startswith("\u00b0") and len(key) > 1:
        return None                    # a temperature (°C, °F): never converted, never an angle
    for candidate in (key, key.lower(), key.lower()[:-1] if key.lower().endswith("s") else None):
        if candidate and candidate in _UNITS:
            return _UNITS[candidate]
    return None


@dataclass(frozen=True)
class Quantity:
    value: Fraction
    unit: str | None = None            # as written ("cm", "%", "km/h"), None for a bare number


def as_quantity(text: str) -> Quantity | None:
    """`text` as one number with an optional unit ("12 cm", "45°", "$5", "50%", "twenty"),
    else None."""
    digits = _words_to_digits(text or "")
    m = _QUANTITY.match(digits)
    if not m:
        return None
    value, unit = _to_fraction(m), (m.group("unit") or "").strip() or None
    if digits != (text or "") and unit and unit_dimension(unit) is None:
        return None                    # "one of them" is not a quantity; "three apples" neither
    return None if value is None else Quantity(value, unit)


def quantities_equal(given: Quantity, truth: Quantity, tol: float) -> bool:
    """Equal numbers, in the same unit after conversion; a percentage equals its fraction
    ("50%" and "0.5"); a unit one side omits is not held against it."""
    gu, tu = unit_dimension(given.unit), unit_dimension(truth.unit)
    if gu and tu:
        if gu[0] != tu[0]:
            return False
        return close(given.value * gu[1], truth.value * tu[1], tol)
    g_pct = gu is not None and gu[0] == "percent"
    t_pct = tu is not None and tu[0] == "percent"
    if g_pct != t_pct:
        scaled = given.value / 100 if g_pct else given.value * 100
        return close(given.value, truth.value, tol) or close(scaled, truth.value, tol)
    return close(given.value, truth.value, tol)
