"""computation: the values read off the chart/table (or the word problem), then exact Python
(fractions, decimal, sympy, numpy, or plain integers) printing the result in the sample's
`answer_format` (integer, fraction, decimal:N)."""

from __future__ import annotations

import keyword
import re
from fractions import Fraction

from pipelines.core.trajectory import Turn
from pipelines.samples.teachers.template.common import Draw, Facts, Skip, assemble, option_sentence

# Names the generated code uses itself: a value called like this is renamed.
_RESERVED = {"Fraction", "Decimal", "ROUND_HALF_UP", "sp", "np", "math", "comb", "os", "cv2",
             "result", "answer", "value", "exact", "round", "int", "print", "sum", "len", "abs", "float", "str"}
_RESULT_NAMES = ("result", "answer", "value", "exact")
_PLACES = {1: "one decimal place", 2: "two decimal places", 3: "three decimal places"}


def _format_words(fmt: str) -> str:
    if fmt == "integer":
        return "as a whole number"
    if fmt == "fraction":
        return "as a fraction in lowest terms"
    places = int(fmt.split(":")[1])
    return f"rounded to {_PLACES.get(places, f'{places} decimal places')}"


def _literal(v) -> str:
    fv = Fraction(str(v))
    return str(fv.numerator) if fv.denominator == 1 else str(v)


def _safe_names(values: dict, expression: str) -> tuple[dict, str, dict]:
    """Values under names that are valid and clash with nothing the code uses; the renames."""
    out, expr, renamed = {}, expression, {}
    for name, v in values.items():
        new = name
        if not name.isidentifier() or keyword.iskeyword(name) or name in _RESERVED:
            new = re.sub(r"\W", "_", f"{name}_v")
            if not new.isidentifier():
                new = f"v_{new}"
            expr = re.sub(rf"(?<![\w.]){re.escape(name)}(?!\w)", new, expr)
            renamed[name] = new
        out[new] = v
    return out, expr, renamed


def _labels(f: Facts, values: dict) -> dict[str, str]:
    """Human names of the values, as the chart, table or question shows them."""
    meta = f.meta
    labels = dict(meta.get("labels") or {})
    header = meta.get("header") or []
    for name in values:
        if name in labels:
            continue
        for col in header[1:]:
            suffix = "_" + re.sub(r"\W", "_", str(col).lower())
            short = {"qty": "_qty", "unit price": "_price"}.get(str(col).lower(), suffix)
            if name.endswith(short):
                row = name[: -len(short)].replace("_", " ").title()
                labels[name] = f"{row} {str(col).lower()}"
                break
    return labels


def _reading(d: Draw, f: Facts, values: dict, labels: dict) -> str:
    def show(name, v):
        text = _literal(v)
        if name.endswith("_price"):
            text = f"{Fraction(str(v)).numerator / Fraction(str(v)).denominator:.2f}"
        return text

    if f.sample.images:
        chart = f.meta.get("chart")
        items = ", ".join(f"{labels.get(k, k)} {show(k, v)}" for k, v in values.items())
        if chart == "table":
            return d.pick(("Reading the table: ", "From the table I read: ",
                           "The table gives: ")) + items + "."
        return d.pick(("Reading the chart: ", "The bars show: ",
                       "From the chart, the values are: ")) + items + "."
    items = ", ".join(f"{k} = {show(k, v)}" for k, v in values.items())
    return d.pick(("From the problem: ", "The given quantities are ", "Setting up the numbers: ")) \
        + items + "."


def _pretty(expression: str, labels: dict) -> str:
    out = expression
    for name in sorted(labels, key=len, reverse=True):
        out = re.sub(rf"(?<![\w]){re.escape(name)}(?!\w)", labels[name], out)
    return out


_SUM_MEAN = re.compile(r"^\(?\s*([A-Za-z_]\w*(?:\s*\+\s*[A-Za-z_]\w*)+)\s*\)?(?:\s*/\s*(\d+))?$")


def _computation_code(d: Draw, values: dict, expression: str, fmt: str) -> str:
    ints = all(Fraction(str(v)).denominator == 1 for v in values.values())
    res = d.pick([r for r in _RESULT_NAMES if r not in values])
    sum_mean = _SUM_MEAN.match(expression.strip())
    styles = []
    if "binomial" in expression:
        styles = ["sympy", "plain"] if ints else ["sympy"]
    else:
        styles = ["fractions", "sympy"] + (["decimal"] if fmt.startswith("decimal") else [])
        if ints and fmt == "integer":
            styles.append("plain")
        if (ints and sum_mean and all(t.strip() in values for t in sum_mean.group(1).split("+"))
                and (fmt.startswith("decimal") if sum_mean.group(2) else fmt == "integer")):
            styles.append("numpy")
    style = d.pick(styles)
    body: list[str] = []
    places = int(fmt.split(":")[1]) if fmt.startswith("decimal") else 0
    quantum = f'Decimal("0.{"0" * (places - 1)}1")' if places else ""
    if style == "numpy":
        names = [t.strip() for t in sum_mean.group(1).split("+")]
        arr = d.pick([a for a in ("vals", "nums", "data_points") if a not in values])
        tot = d.pick([t for t in ("total", "s", "sum_all") if t not in values])
        body.append("# the values in the order they appear")
        body.append(f"{arr} = np.array([{', '.join(_literal(values[k]) for k in names)}])")
        body.append(f"{tot} = int({arr}.sum())")
        if sum_mean.group(2):
            body.append(f"{res} = Decimal({tot}) / {sum_mean.group(2)}")
            body.append(f"print({res}.quantize({quantum}, rounding=ROUND_HALF_UP))")
        else:
            body.append(f"print({tot})")
        return assemble(body)
    expr = expression
    if style == "sympy":
        for k, v in values.items():
            lit = _literal(v)
            body.append(f"{k} = sp.Integer({lit})" if "." not in lit else f'{k} = sp.Rational("{lit}")')
        expr = expr.replace("binomial(", "sp.binomial(")
    elif style == "fractions":
        for k, v in values.items():
            lit = _literal(v)
            body.append(f"{k} = Fraction({lit})" if "." not in lit else f'{k} = Fraction("{lit}")')
    elif style == "decimal":
        for k, v in values.items():
            lit = _literal(v)
            body.append(f"{k} = Decimal({lit})" if "." not in lit else f'{k} = Decimal("{lit}")')
    else:   # plain integers
        if "binomial(" in expr:
            expr = expr.replace("binomial(", "comb(")
        body += [f"{k} = {_literal(v)}" for k, v in values.items()]
    if d.chance(0.5):
        body.append(d.pick(("# exact arithmetic, so rounding happens only at the end",
                            "# compute the quantity the question asks for", "# evaluate")))
    body.append(f"{res} = {expr}")
    if fmt in ("integer", "fraction"):
        if style == "plain":
            body.append(f"print(round({res}))" if "/" in expr else f"print({res})")
        else:
            body.append(f"print({res})")
    elif style == "decimal":
        body.append(f"print({res}.quantize({quantum}, rounding=ROUND_HALF_UP))")
    else:
        p, q = ("p", "q") if style == "sympy" else ("numerator", "denominator")
        conv = (f"int({res}.{p})", f"int({res}.{q})") if style == "sympy" else \
            (f"{res}.{p}", f"{res}.{q}")
        body.append(f"# round half up to {places} places")
        body.append(f"print((Decimal({conv[0]}) / {conv[1]}).quantize({quantum}, rounding=ROUND_HALF_UP))")
    return assemble(body)


_COMP_PLAN = (
    "{reading} The question asks for {pretty}, {fmt_words}. I'll compute it exactly in Python.",
    "{reading} So I need {pretty} ({fmt_words}). Let me let Python do the arithmetic.",
    "{reading} The answer is {pretty}, {fmt_words}; computing it with code avoids slips.",
)
_COMP_CLOSE = (
    "The code prints {text}, so the answer is {text}.{mc}",
    "The computation gives {text}.{mc}",
    "Python confirms the result: {text}.{mc}",
    "So {pretty} = {text}.{mc}",
)


def build_computation(f: Facts, d: Draw, u: float, share: float):
    meta = f.meta
    values, expression, fmt = meta.get("values"), meta.get("expression"), meta.get("answer_format")
    if not values or not expression or not fmt:
        raise Skip
    if fmt not in ("integer", "fraction") and not re.fullmatch(r"decimal:\d", fmt):
        raise Skip
    labels = _labels(f, values) if f.sample.images else {}
    values, expression, renamed = _safe_names(dict(values), str(expression))
    labels = {renamed.get(k, k): v for k, v in labels.items()}
    pretty = _pretty(expression, labels)
    reading = _reading(d, f, values, labels)
    intro = d.say(_COMP_PLAN, reading=reading, pretty=pretty, fmt_words=_format_words(fmt)) + "\n\n"
    code = _computation_code(d, values, expression, fmt)
    close = "\n\n" + d.say(_COMP_CLOSE, text=f.text, pretty=pretty, mc=option_sentence(d, f))
    return "single", [Turn(intro, code), Turn(close)], f.answer
