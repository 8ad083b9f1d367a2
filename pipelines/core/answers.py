"""Answers: pulling the answer out of a model's response and matching it against the ground
truth. The one module the audit, the RL rewards and the evaluation share.

    extract(response) -> Extracted          the answer text and where it came from
    extract_choice(text, options) -> "B"    an option letter written in any common style
    score_answer(response, truth, options)  -> Verdict(correct, decisive, how, given, source)
    match_answer(given, truth, options)     -> Verdict   the same cascade on an answer already
                                            extracted (the audit's `final_answer`)
    answers_match(given, truth, options)    -> (ok, how)  the audit's entry point

The cascade (docs/answers.md has the whole story and the parity table against math-verify):
  1. option letters and an option's text, when the truth names an option;
  2. the same text (case, spacing, punctuation and a leading article aside), for prose answers;
  3. yes/no;
  4. numbers with units (pipelines.core.quantities: currency, thousands separators, fractions,
     percentages, number words, conversion between common units), decisive when both sides are
     whole quantities;
  5. math-verify (pipelines.core.mathverify: LaTeX, expressions, sets, intervals, equations),
     for answers that read as math on both sides, in worker processes bounded in time;
  6. an exact answer against a truth written as a decimal rounded to 2 or more places
     ("\\frac{2}{3}" vs "0.67"), which math-verify rejects.
A rule that says yes decides. A rule that says no decides only where no later rule could say
yes (a number found inside "\\pi/2" does not stop math-verify from reading it). A `Verdict` is
`decisive` when a rule knew the answer was right or wrong; a differently worded open answer, or
math that could not be read or timed out, is not: that is where an optional LLM judge comes in
(thyme_train.rewards, thyme_train.evaluate).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction

from pipelines.core.mathverify import float_rounding, math_check
from pipelines.core.quantities import (  # noqa: F401  re-exported: the audit reads numbers here
    Quantity,
    as_number,
    as_quantity,
    close,
    decimals,
    format_number,
    numbers_in,
    quantities_equal,
    round_to,
    unit_dimension,
)
from sandbox.protocol import extract_answer

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
    return match_answer(ex.text, truth, options, tol, ex.source)


def match_answer(given: str, truth: str, options: Mapping[str, str] | list[str] | None = None,
                 tol: float = 1e-6, source: str = "answer") -> Verdict:
    """The cascade on an answer already extracted (`given`); `source` is recorded as is."""
    if not (given or "").strip():
        return Verdict(False, True, "no answer in the response", "", source)
    table = dict(options) if isinstance(options, Mapping) else parse_options(options)
    t = (truth or "").strip()
    want = _truth_letter(t, table)
    if want is not None:
        letter = extract_choice(given, table or "ABCDEFGH" + want)
        if letter is not None:
            return Verdict(letter == want, True, f"option letter {letter}", given, source)
        hits = [k for k, text in table.items() if text and _compare(given, text, tol)[0]]
        if hits:
            ok = hits == [want]
            return Verdict(ok, True, "the correct option's text" if ok else
                           f"the text of option {hits[0]}", given, source)
        return Verdict(False, False, "neither an option letter nor an option's text", given,
                       source)
    if table:                          # truth given as text, answer as a letter
        letter = choice(given, table)
        if letter is not None and table[letter]:
            ok, how, decisive = _compare(table[letter], t, tol)
            if not ok and any(_compare(text, t, tol)[0] for text in table.values() if text):
                decisive = True            # another option is the truth
            return Verdict(ok, decisive, f"option {letter}: {how}", given, source)
    ok, how, decisive = _compare(given, t, tol)
    return Verdict(ok, decisive, how, given, source)


def answers_match(given: str, truth: str, options: dict[str, str] | None = None,
                  tol: float = 1e-6) -> tuple[bool, str]:
    """Does the (already extracted) answer `given` equal the ground truth `truth`? Returns
    (verdict, how judged): `match_answer` without the decisiveness."""
    v = match_answer(given, truth, options or None, tol)
    return v.correct, v.how


_YES_NO = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}
_YES_NO_FIRST = re.compile(r"^\W*(yes|no|true|false)\s*[,.;:!]", re.IGNORECASE)


def _compare(given: str, truth: str, tol: float) -> tuple[bool, str, bool]:
    """(equal, how judged, decisive) for an extracted answer against an open ground truth."""
    g, t = _plain(given), _plain(truth)
    said = _YES_NO_FIRST.match(t)     # "yes", or "Yes, the light is on." (not "No parking")
    t_word = _YES_NO.get(_text_key(t)) or (_YES_NO[said.group(1).lower()] if said else None)
    if t_word:
        first = re.match(r"^\W*([A-Za-z]+)", g)
        g_word = _YES_NO.get(first.group(1).lower()) if first else None
        if g_word:
            return g_word == t_word, "yes/no", True
    rejected: tuple[str, bool] | None = None     # a "no" that a later rule may overturn
    t_q = as_quantity(t)
    if t_q is not None:
        g_q = as_quantity(g) or as_quantity(_PREFIX.sub("", g, count=1))
        if g_q is not None:            # both whole quantities: units are ours to judge
            if quantities_equal(g_q, t_q, tol):
                return True, "numbers", True
            if g_q.unit and t_q.unit and not (unit_dimension(g_q.unit) and unit_dimension(t_q.unit)):
                return False, "numbers in units we do not convert", False   # 68 °F vs 20 °C
            rounded = None if g_q.unit or t_q.unit else _rounded_truth(g_q.value, g, t)
            return (True, rounded, True) if rounded else (False, "numbers", True)
        nums = numbers_in(g)
        if len(nums) == 1 and quantities_equal(Quantity(nums[0]), t_q, tol):
            return True, "numbers", True
        rejected = ("numbers", True) if len(nums) == 1 else ("not a single number", False)
    if " ".join(g.split()).casefold() == " ".join(t.split()).casefold():
        return True, "normalised text", True
    mathy = looks_like_math(given) and looks_like_math(truth)
    if not mathy and _same_text(g, t):
        return True, "normalised text", True
    if mathy:
        if _too_large(given) or _too_large(truth):
            return False, "math too large to evaluate safely", False
        m = math_check(given, truth, float_rounding(tol))
        if m.correct:
            return True, "symbolic math", True
        rounded = _rounded_truth(m.given_value, g, t)
        if rounded:
            return True, rounded, True
        if m.decided:
            return False, "symbolic math", True
        if rejected is None or not rejected[1]:
            rejected = (f"math-verify undecided: {m.note or 'unreadable math'}", False)
    if rejected is not None:
        return False, rejected[0], rejected[1]
    return False, "numbers, normalised text and math differ", False


def _rounded_truth(value: Fraction | None, given: str, truth: str) -> str | None:
    """How an exact answer ("2/3", "\\frac{2}{3}", "\\pi") matches a ground truth written as a
    decimal rounded to k >= 2 places ("0.67", "3.14"); None when it does not. A given decimal
    must match within the tolerance instead: "0.674" is not "0.67"."""
    if value is None or re.search(r"\d\.\d", given) or "%" in truth:
        return None
    places, rounded = decimals(truth), as_number(truth)
    if places < 2 or rounded is None or round_to(value, places) != rounded:
        return None
    return f"numbers (the truth rounded to {places} decimals)"


# Words that may stand in math: function names, LaTeX names written plainly.
_MATH_WORDS = frozenset({
    "sqrt", "pi", "sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh",
    "cosh", "tanh", "log", "ln", "exp", "lim", "max", "min", "gcd", "lcm", "mod", "det", "inf",
    "infty"})
# Two-letter English words: "5 or 6" is prose, "2xy" is math.
_PROSE_PAIRS = frozenset({
    "or", "and", "is", "of", "to", "in", "it", "be", "by", "no", "so", "as", "at", "an", "if",
    "on", "we", "he", "me", "my", "up", "do", "go", "am", "us", "ok"})
_MATH_SIGNAL = re.compile(r"\d|\\[A-Za-z]|[=+\-*/^<>!_|()\[\]{}]")
MAX_MATH_CHARS = 300                   # longer answers are prose or a derivation: the judge's


def looks_like_math(text: str) -> bool:
    """Is `text` an answer math-verify should read: a number, a formula, LaTeX, a set or an
    interval, with no prose word, unit name or code in it ("5 or 6", "12 cm", "red", "GN-4885"
    are not)? Those go to the text rules and the judge: math-verify reads "no" as n*o, and "on"
    as the same product."""
    s = (text or "").strip()
    if not s or len(s) > MAX_MATH_CHARS:
        return False
    words = re.sub(r"\\(?:text|textbf|textnormal|mathrm|mbox)\s*\{([^{}]*)\}", r" \1 ", s)
    words = re.sub(r"\\[A-Za-z]+", " ", words)        # LaTeX commands are math
    for word in re.findall(r"[A-Za-z]+", words):
        w = word.lower()
        if len(w) == 1 or w in _MATH_WORDS:
            continue
        if (len(w) >= 3 or w in _PROSE_PAIRS or unit_dimension(w) is not None
                or word != w):         # "GN-4885", "AB12": a code or a name, not a product
            return False
    return bool(_MATH_SIGNAL.search(s))


# Numbers no answer needs and no check should build: 9^9^9, 2^{12345}, 123456!
_TOO_LARGE = re.compile(r"\^\s*\{?\s*\d+\s*\^|\^\s*\{?\s*\(?\s*\d{5,}|\d{5,}\s*!")


def _too_large(text: str) -> bool:
    return bool(_TOO_LARGE.search(text.replace("**", "^")))


def math_equal(given: str, truth: str, tol: float = 1e-6) -> bool:
    """Do two math answers (plain or LaTeX) denote the same value or expression, per math-verify?
    False for anything that does not read as math."""
    if not (looks_like_math(given) and looks_like_math(truth)) or _too_large(given + " " + truth):
        return False
    return math_check(given, truth, float_rounding(tol)).correct


def _plain(text: str) -> str:
    """LaTeX decorations that do not change a value: \\text{}, \\%, ^\\circ, \\$, thin spaces."""
    s = re.sub(r"\\(?:text|textbf|textnormal|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}", r"\1",
               text)
    s = re.sub(r"\^\s*\{?\\circ\}?|\\circ|\\degree", "\u00b0", s)
    if s.count("$") - s.count("\\$") == 2:
        s = re.sub(r"(?<!\\)\$", "", s)   # inline math "$125$ miles", not a currency sign
    s = s.replace("\\%", "%").replace("\\$", "$").replace("\\!", "").replace("\\,", "")
    s = s.replace("\\ ", " ").replace("~", " ")
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
# What kind of ground truth: can the rules decide it?
# ---------------------------------------------------------------------------------------------

TRUTH_KINDS = ("option", "yes_no", "number", "math", "short_text", "open", "empty")
# The rules say right AND wrong for these: an RL reward needs no judge.
RULE_DECIDED = ("option", "yes_no", "number", "math")
SHORT_TEXT_WORDS = 6                   # a name, a code, a sign's words: right when the text matches


def truth_kind(truth: str, options: Mapping[str, str] | list[str] | None = None) -> str:
    """Which branch of the cascade decides answers to this ground truth (one of TRUTH_KINDS):
    an option letter (or an option's text), yes/no, a number with or without a unit, math
    (math-verify), a short text (<= SHORT_TEXT_WORDS words: the rules say right when the
    normalised text matches; a differently worded right answer needs the judge), open prose
    (only a judge decides), or empty. `RULE_DECIDED` kinds need no judge at all."""
    t = (truth or "").strip()
    if not t:
        return "empty"
    table = dict(options) if isinstance(options, Mapping) else parse_options(options)
    if _truth_letter(t, table) is not None or (table and any(_text_key(v) == _text_key(t)
                                                             for v in table.values() if v)):
        return "option"
    plain = _plain(t)
    if _YES_NO.get(_text_key(plain)) or _YES_NO_FIRST.match(plain):
        return "yes_no"
    if as_quantity(plain) is not None:
        return "number"
    if looks_like_math(t):
        return "math"
    words = re.findall(r"[^\W_]+", plain)
    return "short_text" if len(words) <= SHORT_TEXT_WORDS else "open"


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
