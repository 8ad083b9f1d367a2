"""Answers: pulling the answer out of a model's response and matching it against the ground
truth. The one module the audit, the RL rewards and the evaluation share.

    extract(response) -> Extracted          the answer text and where it came from
    extract_choice(text, options) -> "B"    an option letter written in any common style
    score_answer(response, truth, options)  -> Verdict(correct, decisive, how, given, source)
    answers_match(given, truth, options)    -> (ok, how)   the audit's entry point (an answer
                                            already extracted by `final_answer`)

The matching cascade, cheapest and surest first: option letters (and an option's text), yes/no,
numbers (currency, thousands separators, fractions, percentages, number words, units with
conversion between the common ones), normalised text (case, punctuation, a leading article),
then symbolic math (LaTeX fractions/roots, equations `x = 5`, tuples and sets) with sympy, in
the spirit of math-verify (not a dependency). A `Verdict` is `decisive` when a rule knew the
answer was right or wrong (both sides read as letters, numbers or math); an open text answer
that differs from the truth is not decisive: a paraphrase may still be right, so that is where
an optional LLM judge comes in (thyme_train.rewards).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

from sandbox.protocol import extract_answer

# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------

_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-+\u2212]?)(?:"
    r"(?P<num>\d+(?:\.\d+)?)\s*/\s*(?P<den>\d+(?:\.\d+)?)"
    r"|(?P<dec>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+)"
    r")(?![\w])")
_WHOLE_NUMBER = re.compile(
    r"^\s*(?P<sign>[-+\u2212]?)\s*[$\u20ac\u00a3\u00a5]?\s*(?P<sign2>[-+\u2212]?)(?:"
    r"(?P<num>\d+(?:\.\d+)?)\s*/\s*(?P<den>\d+(?:\.\d+)?)"
    r"|(?P<dec>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)"
    r")\s*%?\s*\.?\s*$")


def _to_fraction(m: re.Match) -> Fraction | None:
    signs = (m.group("sign") or "") + (m.groupdict().get("sign2") or "")
    negative = signs.count("-") + signs.count("\u2212") == 1
    try:
        if m.group("dec") is not None:
            value = Fraction(m.group("dec").replace(",", ""))
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
    r"|(?P<dec>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)"
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


def _unit(name: str | None) -> tuple[str, Fraction] | None:
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
    if digits != (text or "") and unit and _unit(unit) is None:
        return None                    # "one of them" is not a quantity; "three apples" neither
    return None if value is None else Quantity(value, unit)


def quantities_equal(given: Quantity, truth: Quantity, tol: float) -> bool:
    """Equal numbers, in the same unit after conversion; a percentage equals its fraction
    ("50%" and "0.5"); a unit one side omits is not held against it."""
    gu, tu = _unit(given.unit), _unit(truth.unit)
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


# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------

_BOXED = "\\boxed{"
_PREFIX = re.compile(r"^\s*(?:the\s+)?(?:final\s+|correct\s+)?(?:answer|option|choice)\s*(?:is)?\s*[:\-]?\s*",
                     re.IGNORECASE)


def final_answer(text: str) -> str:
    """The answer proper: inside <answer>...</answer> if present, inside the last \\boxed{},
    markdown emphasis and surrounding quotes removed."""
    text = text or ""
    inner = extract_answer(text)
    if inner is not None:
        text = inner
    boxed = _last_boxed(text)
    if boxed is not None:
        text = boxed
    return _clean(text)


def _last_boxed(text: str) -> str | None:
    """The content of the last complete `\\boxed{…}` (nested braces allowed), else None."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, i = 1, start + len(_BOXED)
    j = i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i:j - 1] if depth == 0 else None


def _clean(text: str) -> str:
    text = text.strip().strip("*`").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


# Sources `extract` reports, from the most to the least explicit.
SOURCES = ("answer", "boxed", "open_answer", "phrase", "text", "empty")

_ANSWER_PHRASE = re.compile(
    r"\b(?:final\s+answer|answer|correct\s+(?:option|choice))\s*(?:is\b|:|=|\uff1a)\s*:?\s*"
    r"(?P<ans>[^\n]+)", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=\S)[.!]\s+(?=[A-Z(\[])")
_REASON_TAIL = re.compile(r"(?:,\s*(?:since|because|as|which|so|given)|\s+because)\b.*$",
                          re.IGNORECASE | re.DOTALL)
_OPEN_ANSWER = re.compile(r"<answer>", re.IGNORECASE)


@dataclass(frozen=True)
class Extracted:
    text: str                          # the answer proper, cleaned
    source: str                        # one of SOURCES: where it was found


def extract(response: str) -> Extracted:
    """The answer of a response: `<answer>…</answer>` (a `\\boxed{}` inside unwrapped), else
    the last `\\boxed{}`, else what follows an unclosed `<answer>` (a truncated response), else
    what follows the last "answer is"/"Answer:", else the text after `</think>` (or all of it)."""
    text = response or ""
    inner = extract_answer(text)
    if inner is not None:
        boxed = _last_boxed(inner)
        return Extracted(_clean(boxed if boxed is not None else inner), "answer")
    boxed = _last_boxed(text)
    if boxed is not None:
        return Extracted(_clean(boxed), "boxed")
    opened = list(_OPEN_ANSWER.finditer(text))
    if opened:
        return Extracted(_clean(text[opened[-1].end():]), "open_answer")
    after_think = re.split(r"</think>", text, flags=re.IGNORECASE)[-1]
    phrases = list(_ANSWER_PHRASE.finditer(after_think))
    if phrases:
        ans = _SENTENCE_END.split(phrases[-1].group("ans"), maxsplit=1)[0]
        ans = _REASON_TAIL.sub("", ans)
        return Extracted(_clean(ans.rstrip(" .")) or _clean(ans), "phrase")
    cleaned = _clean(after_think)
    return Extracted(cleaned, "text" if cleaned else "empty")


# ---------------------------------------------------------------------------------------------
# Option letters
# ---------------------------------------------------------------------------------------------

def parse_options(options) -> dict[str, str]:
    """{"A": "text", ...} from option lines like "A. text" / "(B) text"."""
    out: dict[str, str] = {}
    for line in options or []:
        m = re.match(r"^\s*\(?([A-Z])\s*[.):]\s*(.*?)\s*$", str(line), re.S)
        if m and m.group(1) not in out:
            out[m.group(1)] = m.group(2)
    return out


def choice(given: str, options: dict[str, str]) -> str | None:
    """The option letter `given` names ("B", "B.", "(B)", "B) text", "Answer: B"), else None."""
    s = _PREFIX.sub("", given.strip(), count=1)
    m = re.match(r"^(\(|\[)?([A-Za-z])(\)|\])?(?=$|[\s.:,)\]])\s*([.:,)\]])?\s*(.*)$", s, re.S)
    if not m:
        return None
    opened, letter, closed, punct, rest = m.groups()
    upper = letter.upper()
    if upper not in options:
        return None
    if not rest.strip() or (letter.isupper() and (opened or closed or punct)):
        return upper
    # "A red sign", "b. stop 34": a letter followed by words only if the words are its option
    return upper if _text_key(rest) == _text_key(options[upper] or "") else None


_MARKED_LETTER = re.compile(
    r"\b(?:answer|option|choice)(?:\s+(?:is|would\s+be|should\s+be))?\s*[:\uff1a\-]?\s*"
    r"(?P<open>[(\[]\s*)?(?P<letter>[A-Za-z])(?P<close>\s*[)\]])?(?![\w'\u2019])(?=(?P<after>[^\n]{0,12}))",
    re.IGNORECASE)
_LONE_LETTER = re.compile(
    r"(?<![\w'\u2019\\])(?P<open>[(\[]\s*)?(?P<letter>[A-Za-z])(?P<close>\s*[)\]])?"
    r"(?![\w'\u2019])(?=(?P<after>[^\n]{0,12}))")


_VERB_AFTER_LETTER = re.compile(r"^\s+(?:is|was|seems|looks|matches|and|or|because)\b")


def _letter_meant(m: re.Match, letters: Iterable[str]) -> str | None:
    """The option letter a regex match names, unless it reads as a word: a lowercase letter
    outside brackets and not followed by punctuation, "A" as an article or "I" as a pronoun
    (followed by a lowercase word)."""
    letter, after = m.group("letter"), m.group("after")
    if letter.upper() not in letters:
        return None
    if m.group("open") or m.group("close"):
        return letter.upper()
    if letter.islower():
        return letter.upper() if re.match(r"^(?:$|[.,:;!?)])", after) else None
    if letter in "AI" and re.match(r"^\s+[a-z]", after) and not _VERB_AFTER_LETTER.match(after):
        return None
    return letter


def extract_choice(text: str, options: Mapping[str, str] | Iterable[str] = "ABCDE") -> str | None:
    """The option letter an answer names, in any common style: "B", "(b)", "B. text", "**B**",
    "Answer: B", "The correct option is (B) because …", "\\boxed{B}", or a single letter the
    text mentions alone. None when no letter or several different ones are named. `options`:
    {letter: text} (a letter followed by words must be followed by its own option's text) or
    just the valid letters."""
    table = dict(options) if isinstance(options, Mapping) else {c.upper(): "" for c in options}
    letters = set(table)
    ex = extract(text)
    s = re.sub(r"^\\(?:text|textbf|mathrm|mathbf)\{(.*)\}$", r"\1", ex.text)
    if not s:
        return None
    direct = choice(s, table)
    if direct is not None:
        return direct
    marked = [x for m in _MARKED_LETTER.finditer(s) if (x := _letter_meant(m, letters))]
    if marked:
        return marked[-1]
    lone = {x for m in _LONE_LETTER.finditer(s) if (x := _letter_meant(m, letters))}
    return lone.pop() if len(lone) == 1 else None


def _truth_letter(truth: str, options: dict[str, str]) -> str | None:
    """The option letter a ground truth names ("B", "(B)", "B."), else None."""
    m = re.fullmatch(r"\s*[(\[]?\s*([A-Z])\s*[)\].]?\s*", truth)
    if not m:
        return None
    letter = m.group(1)
    return letter if (not options or letter in options) else None


# ---------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    correct: bool
    decisive: bool                     # a rule settled it; False: only a judge could (a
                                       # differently worded open answer, no letter found)
    how: str                           # which rule decided, for a person reading logs
    given: str                         # the extracted answer
    source: str                        # where it was found (see SOURCES)


def score_answer(response: str, truth: str, options: Mapping[str, str] | list[str] | None = None,
                 tol: float = 1e-6) -> Verdict:
    """Score a whole response against the ground truth with the rule cascade. `options`:
    {letter: text} or option lines ("A. text"); a truth that is an option letter (or a single
    capital letter when no options are given) makes it a multiple-choice question."""
    ex = extract(response)
    if not ex.text:
        return Verdict(False, True, "no answer in the response", "", ex.source)
    table = dict(options) if isinstance(options, Mapping) else parse_options(options)
    t = (truth or "").strip()
    want = _truth_letter(t, table)
    if want is not None:
        letter = extract_choice(ex.text, table or "ABCDEFGH" + want)
        if letter is not None:
            return Verdict(letter == want, True, f"option letter {letter}", ex.text, ex.source)
        hits = [k for k, text in table.items() if text and _compare(ex.text, text, tol)[0]]
        if hits:
            ok = hits == [want]
            return Verdict(ok, True, "the correct option's text" if ok else
                           f"the text of option {hits[0]}", ex.text, ex.source)
        return Verdict(False, False, "neither an option letter nor an option's text", ex.text,
                       ex.source)
    if table:                          # truth given as text, answer as a letter
        letter = choice(ex.text, table)
        if letter is not None and table[letter]:
            ok, how, decisive = _compare(table[letter], t, tol)
            if not ok and any(_compare(text, t, tol)[0] for text in table.values() if text):
                decisive = True            # another option is the truth
            return Verdict(ok, decisive, f"option {letter}: {how}", ex.text, ex.source)
    ok, how, decisive = _compare(ex.text, t, tol)
    return Verdict(ok, decisive, how, ex.text, ex.source)


def answers_match(given: str, truth: str, options: dict[str, str] | None = None,
                  tol: float = 1e-6) -> tuple[bool, str]:
    """Does the (already extracted) answer `given` equal the ground truth `truth`? Returns
    (verdict, how judged)."""
    options = options or {}
    t = truth.strip()
    if options and len(t) <= 3 and choice(t, options) is not None and as_number(t) is None:
        want = choice(t, options)
        letter = choice(given, options)
        if letter is not None:
            return letter == want, f"option letter {letter}"
        hits = [k for k, text in options.items() if _compare(given, text, tol)[0]]
        if hits == [want]:
            return True, "the correct option's text"
        if hits:
            return False, f"the text of option {hits[0]}"
        return False, "neither an option letter nor an option's text"
    ok, how, _ = _compare(given, t, tol)
    return ok, how


_YES_NO = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}


def _compare(given: str, truth: str, tol: float) -> tuple[bool, str, bool]:
    """(equal, how judged, decisive) for an extracted answer against an open ground truth."""
    given, truth = _plain(given), _plain(truth)
    t_word = _YES_NO.get(_text_key(truth))
    if t_word:
        first = re.match(r"^\W*([A-Za-z]+)", given)
        g_word = _YES_NO.get(first.group(1).lower()) if first else None
        if g_word:
            return g_word == t_word, "yes/no", True
    t_q = as_quantity(truth)
    if t_q is not None:
        g_q = as_quantity(given) or as_quantity(_PREFIX.sub("", given, count=1))
        if g_q is None:
            nums = numbers_in(given)
            g_q = Quantity(nums[0]) if len(nums) == 1 else None
        if g_q is not None:
            return quantities_equal(g_q, t_q, tol), "numbers", True
    math = None
    if _collection(given) or _collection(truth):   # "(1, 2)" is not the text "12"
        math = _math_compare(given, truth, tol)
    if math is None and _same_text(given, truth):
        return True, "normalised text", True
    if math is None:
        math = _math_compare(given, truth, tol)
    if math is not None:
        return math, "symbolic math", True
    if t_q is not None:
        return False, "not a single number", False
    return False, "numbers, normalised text and math differ", False


def _plain(text: str) -> str:
    """LaTeX decorations that do not change a value: \\text{}, \\%, ^\\circ, \\$, thin spaces."""
    s = re.sub(r"\\(?:text|textbf|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}", r"\1", text)
    s = re.sub(r"\^\s*\{?\\circ\}?|\\circ|\\degree", "\u00b0", s)
    s = s.replace("\\%", "%").replace("\\$", "$").replace("\\!", "").replace("\\,", "")
    s = s.replace("\\ ", " ").replace("~", " ")
    if s.count("$") == 2 and s.strip().startswith("$") and s.strip().endswith("$"):
        s = s.strip()[1:-1]            # inline math $...$, not a currency sign
    return s.strip()


_ARTICLES = ("a", "an", "the")


def _text_keys(text: str) -> set[str]:
    words = re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", text).casefold())
    keys = {"".join(words)}
    if len(words) > 1 and words[0] in _ARTICLES:
        keys.add("".join(words[1:]))
    return keys


def _text_key(text: str) -> str:
    return "".join(re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", text).casefold()))


def _same_text(given: str, truth: str) -> bool:
    g = _text_keys(given) | _text_keys(_PREFIX.sub("", given, count=1))
    return bool(g & _text_keys(truth)) and "" not in (g & _text_keys(truth))


# ---------------------------------------------------------------------------------------------
# An answer against a value the sandbox printed (consistency)
# ---------------------------------------------------------------------------------------------

def last_printed_number(text: str) -> Fraction | None:
    """The last number on the last line of printed output that has one, else None."""
    for line in reversed((text or "").splitlines()):
        nums = numbers_in(line)
        if nums:
            return nums[-1]
    return None


def stated_number(answer: str, options: dict[str, str] | None = None) -> tuple[Fraction | None, str]:
    """The number an (extracted) answer states, and the text it was read from: the chosen
    option's text for an option letter, else the answer; None when it is not one number."""
    stated_text = answer
    letter = choice(answer, options) if options else None
    if letter is not None:
        stated_text = options[letter]
    stated = as_number(stated_text)
    if stated is None:
        nums = numbers_in(stated_text)
        stated = nums[0] if len(nums) == 1 else None
    return stated, stated_text


def agrees_with_printed(stated: Fraction, stated_text: str, printed: Fraction, tol: float) -> bool:
    """Does a stated answer equal a printed value (within `tol`, or the printed value rounded to
    the answer's decimal places: "0.67" agrees with 0.6666…)?"""
    places = decimals(stated_text)
    return close(stated, printed, tol) or (places > 0 and round_to(printed, places) == stated)


# ---------------------------------------------------------------------------------------------
# Symbolic math
# ---------------------------------------------------------------------------------------------

_MATH_NAMES = {"sqrt", "pi", "exp", "log", "ln", "sin", "cos", "tan", "E", "I"}
_MATH_CHARS = re.compile(r"^[\w\s+\-*/^().]*$")
_SIMPLE_LHS = re.compile(r"^\s*[A-Za-z]\w{0,2}\s*=\s*(?P<rhs>[^=]+)$")


def _latex_to_text(s: str) -> str:
    s = s.strip().strip("$").replace("\\left", "").replace("\\right", "").replace("\\,", "")
    s = s.replace("\\cdot", "*").replace("\\times", "*").replace("\\pi", "pi").replace("\\div", "/")
    s = re.sub(r"\\[dt]?frac\s*(\d)\s*(\d)", r"((\1)/(\2))", s)     # \frac12
    s = re.sub(r"\\sqrt\s*(\d+)", r"sqrt(\1)", s)                    # \sqrt2
    for _ in range(5):
        s2 = re.sub(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"((\1)/(\2))", s)
        s2 = re.sub(r"\\sqrt\s*\{([^{}]*)\}", r"sqrt(\1)", s2)
        if s2 == s:
            break
        s = s2
    return s.replace("{", "(").replace("}", ")")


def _sympy_expr(text: str):
    """A sympy expression for short, plain math text; None for anything else (never evaluates
    names outside a small whitelist, never builds huge powers)."""
    s = _latex_to_text(text)
    if not s or len(s) > 100 or not _MATH_CHARS.match(s) or "__" in s or "\\" in s:
        return None
    if any(len(n) > 1 and n not in _MATH_NAMES for n in re.findall(r"[A-Za-z_]\w*", s)):
        return None
    if not re.search(r"[\d+\-*/^()]|sqrt|pi", s):
        return None
    powers = re.findall(r"(?:\^|\*\*)\s*\(?\s*-?(\d*)", s)
    if len(powers) > 2 or any(len(p) > 3 for p in powers):
        return None
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    try:
        import sympy

        return parse_expr(s, local_dict={"ln": sympy.log, "e": sympy.E},
                          transformations=standard_transformations
                          + (implicit_multiplication_application, convert_xor))
    except Exception:  # noqa: BLE001  sympy raises many kinds on odd input
        return None


def _exprs_equal(a, b, tol: float) -> bool:
    import sympy

    try:
        diff = a - b
        if not diff.free_symbols:
            value, scale = complex(sympy.N(diff)), abs(complex(sympy.N(b)))
            return abs(value) <= tol * max(1.0, scale)
        return sympy.simplify(diff) == 0
    except Exception:  # noqa: BLE001
        return False


def _split_top(s: str) -> list[str]:
    """`s` split at commas outside brackets."""
    parts, depth, cur = [], 0, []
    for ch in s:
        depth += (ch in "([{") - (ch in ")]}")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def _collection(s: str) -> tuple[str, list[str]] | None:
    """("set" | "tuple" | "[)"-style interval brackets, elements) for "\\{1, 2\\}", "(1, 2)",
    "[0, 1)", "1, 2"; None for a single value."""
    s = s.strip().strip("$").replace("\\left", "").replace("\\right", "").strip()
    kind = "tuple"
    if s.startswith("\\{") and s.endswith("\\}"):
        kind, s = "set", s[2:-2]
    elif len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _split_top(s[1:-1]) != [s[1:-1].strip()]:
        kind, s = s[0] + s[-1], s[1:-1]
    parts = _split_top(s)
    return (kind, parts) if len(parts) > 1 and all(parts) else None


def _math_compare(given: str, truth: str, tol: float) -> bool | None:
    """Mathematical equality; None when either side is not math the parser accepts."""
    g, t = _collection(given), _collection(truth)
    if g is not None or t is not None:
        if g is None or t is None or len(g[1]) != len(t[1]):
            return False               # a single value is not a tuple; sizes differ
        if g[0] == "set" or t[0] == "set":
            rest = list(t[1])
            for item in g[1]:
                hit = next((x for x in rest if _math_compare(item, x, tol)), None)
                if hit is None:
                    return False
                rest.remove(hit)
            return True
        if g[0] != t[0] and ("tuple" not in (g[0], t[0])):
            return False               # [0, 1) vs (0, 1]: different intervals
        results = [_math_compare(a, b, tol) for a, b in zip(g[1], t[1], strict=True)]
        return None if None in results else all(results)
    if (m := _SIMPLE_LHS.match(given)) and "=" not in truth:
        given = m.group("rhs")         # "x = 5" answers "5"
    if (m := _SIMPLE_LHS.match(truth)) and "=" not in given:
        truth = m.group("rhs")
    if "=" in given and "=" in truth:
        gl, _, gr = given.partition("=")
        tl, _, tr = truth.partition("=")
        left, right = _math_compare(gl, tl, tol), _math_compare(gr, tr, tol)
        return None if None in (left, right) else left and right
    a, b = _sympy_expr(given), _sympy_expr(truth)
    if a is None or b is None:
        return None
    return _exprs_equal(a, b, tol)


def math_equal(given: str, truth: str, tol: float = 1e-6) -> bool:
    """Do two math answers (plain or LaTeX) denote the same value or expression?"""
    return bool(_math_compare(given, truth, tol))
