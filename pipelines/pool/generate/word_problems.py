"""computation without an image: word problems (speed, discounts, fractions, equations, interest,
series, combinations, means, work rates, percent change, areas), each an exact expression over
named values with its answer format (see `numbers`). A sample's `kind` is its maker's name."""

from __future__ import annotations

from fractions import Fraction

from pipelines.pool.generate.built import Built
from pipelines.pool.generate.numbers import finish_computation, numeric_perturb
from pipelines.pool.generate.rand import pick, randint, sample_distinct
from pipelines.pool.generate.words import NAMES


def build_word_problem(rng) -> Built:
    for _ in range(20):
        make = pick(rng, _WORD_PROBLEMS)
        q, values, expr, fmt = make(rng)
        answer = finish_computation(values, expr, fmt)
        if answer is not None:
            break
    meta = {"values": values, "expression": expr, "answer_format": fmt}
    # The kind is the maker's name without "_wp_": renaming a maker changes the output.
    return Built("computation", make.__name__.removeprefix("_wp_"), q, answer, [], meta, [],
                 numeric_perturb(fmt))


def _wp_speed(rng):
    hours = Fraction(randint(rng, 3, 20), 4)
    d = randint(rng, 40, 650)
    vehicle = pick(rng, ("train", "car", "bus", "cyclist", "ferry"))
    q = (f"A {vehicle} travels {d} km in {_num_text(float(hours))} hours at a constant speed. "
         "What is its speed in km/h? Round to one decimal place.")
    return q, {"distance": d, "hours": float(hours)}, "distance / hours", "decimal:1"


def _wp_discount(rng):
    p, d, t = randint(rng, 20, 500), pick(rng, (5, 10, 15, 20, 25, 30, 35, 40)), pick(rng, (5, 6, 7, 8, 9, 10, 12))
    thing = pick(rng, ("jacket", "bicycle", "lamp", "pair of boots", "backpack", "blender"))
    q = (f"A {thing} costs ${p}. It is discounted by {d}%, and then a {t}% sales tax is added to "
         "the discounted price. What is the final price in dollars? Round to two decimal places.")
    return q, {"price": p, "discount": d, "tax": t}, "price * (1 - discount/100) * (1 + tax/100)", "decimal:2"


def _wp_fraction(rng):
    while True:
        a = Fraction(randint(rng, 1, 4), randint(rng, 2, 9))
        b = Fraction(randint(rng, 1, 4), randint(rng, 2, 9))
        if a < 1 and b < 1 and a + b < 1:
            break
    n1, n2 = sample_distinct(rng, NAMES, 2)
    food = pick(rng, ("pizza", "cake", "pie", "chocolate bar"))
    q = (f"{n1} eats {a} of a {food} and {n2} eats {b} of it. What fraction of the {food} is left? "
         "Give the answer as a fraction in lowest terms.")
    values = {"first_num": a.numerator, "first_den": a.denominator,
              "second_num": b.numerator, "second_den": b.denominator}
    return q, values, "1 - first_num/first_den - second_num/second_den", "fraction"


def _wp_linear(rng):
    x = randint(rng, -12, 15)
    a, c = sample_distinct(rng, range(2, 10), 2)
    b = randint(rng, -20, 20)
    d = a * x + b - c * x
    q = f"Solve for x: {a}x {_signed(b)} = {c}x {_signed(d)}. What is x?"
    return q, {"a": a, "b": b, "c": c, "d": d}, "(d - b) / (a - c)", "integer"


def _wp_interest(rng):
    p = randint(rng, 5, 50) * 100
    r = pick(rng, (2, 2.5, 3, 3.5, 4, 4.5, 5, 6))
    n = randint(rng, 2, 5)
    q = (f"${p} is invested at {_num_text(r)}% interest per year, compounded annually. "
         f"How much is the investment worth after {n} years? Round to two decimal places.")
    return q, {"principal": p, "rate": r, "years": n}, "principal * (1 + rate/100)**years", "decimal:2"


def _wp_series(rng):
    a = randint(rng, 1, 60)
    b = a + randint(rng, 5, 120)
    q = f"What is the sum of all integers from {a} to {b} inclusive?"
    return q, {"first": a, "last": b}, "(first + last) * (last - first + 1) / 2", "integer"


def _wp_choose(rng):
    n, k = randint(rng, 5, 16), randint(rng, 2, 4)
    group = pick(rng, ("people", "students", "players", "volunteers"))
    q = f"In how many ways can a team of {k} be chosen from {n} {group}, if order does not matter?"
    return q, {"n": n, "k": k}, "binomial(n, k)", "integer"


def _wp_system(rng):
    x, y = randint(rng, 2, 40), randint(rng, 1, 30)
    x, y = max(x, y), min(x, y)
    q = (f"Two numbers add up to {x + y} and their difference is {x - y}. "
         "What is their product?")
    return q, {"total": x + y, "gap": x - y}, "((total + gap) / 2) * ((total - gap) / 2)", "integer"


def _wp_mean(rng):
    n = randint(rng, 4, 7)
    scores = [randint(rng, 50, 100) for _ in range(n)]
    names = [f"s{k + 1}" for k in range(n)]
    q = (f"A student's test scores are {', '.join(map(str, scores[:-1]))} and {scores[-1]}. "
         "What is the mean score? Round to one decimal place.")
    return q, dict(zip(names, scores, strict=True)), f"({' + '.join(names)}) / {n}", "decimal:1"


def _wp_work(rng):
    a, b = sample_distinct(rng, range(2, 13), 2)
    q = (f"Pipe A fills a tank in {a} hours and pipe B fills it in {b} hours. Working together, "
         "how many hours do they need to fill the tank? Give the answer as a fraction in lowest terms.")
    return q, {"a": a, "b": b}, "a * b / (a + b)", "fraction"


def _wp_change(rng):
    old = randint(rng, 20, 500)
    new = old + pick(rng, (-1, 1)) * randint(rng, 1, old // 2)
    direction = "increase" if new > old else "decrease"
    q = (f"A price changes from ${old} to ${new}. By what percent did it {direction}? "
         "Round to one decimal place.")
    expr = "100 * (new - old) / old" if new > old else "100 * (old - new) / old"
    return q, {"old": old, "new": new}, expr, "decimal:1"


def _wp_area(rng):
    length, width = randint(rng, 8, 40), randint(rng, 6, 30)
    s = randint(rng, 2, min(length, width) - 1)
    q = (f"A rectangular garden is {length} m long and {width} m wide. A square pond with sides of "
         f"{s} m is dug in it. What area of the garden, in square metres, is not covered by the pond?")
    return q, {"length": length, "width": width, "side": s}, "length * width - side**2", "integer"


_WORD_PROBLEMS = (_wp_speed, _wp_discount, _wp_fraction, _wp_linear, _wp_interest, _wp_series,
                  _wp_choose, _wp_system, _wp_mean, _wp_work, _wp_change, _wp_area)


def _num_text(x) -> str:
    """A number as a question shows it: 2.5, 12, 0.75."""
    f = Fraction(str(x))
    if f.denominator == 1:
        return str(f.numerator)
    return format(float(f), "g")


def _signed(x: int) -> str:
    return f"+ {x}" if x >= 0 else f"- {-x}"
