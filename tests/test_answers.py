"""Answer extraction and matching (pipelines.core.answers): table-driven, one row per style."""

import pytest

from pipelines.core.answers import (
    answers_match,
    as_quantity,
    extract,
    extract_choice,
    final_answer,
    math_equal,
    score_answer,
)

OPTIONS = {"A": "STOP 35", "B": "STOP 34", "C": "SLOW 34", "D": "STOP 43"}


@pytest.mark.parametrize("response, text, source", [
    ("<think>look</think> <answer>B</answer>", "B", "answer"),
    ("<think>x</think> <answer>The value is \\boxed{42}.</answer>", "42", "answer"),
    ("so we get \\boxed{\\frac{1}{2}} and \\boxed{3}", "3", "boxed"),
    ("\\boxed{\\sqrt{x^{2}}}", "\\sqrt{x^{2}}", "boxed"),            # nested braces
    ("<think>long reasoning</think> <answer>truncat", "truncat", "open_answer"),
    ("The answer is (B). Because the sign says so.", "(B)", "phrase"),
    ("Final answer: 3.5 m.", "3.5 m", "phrase"),
    ("So the answer is 5, since 2+3=5", "5", "phrase"),
    ("<think>the answer is B</think> C", "C", "text"),             # after </think> only
    ("  **`red`**  ", "red", "text"),
    ("", "", "empty"),
    ("<answer></answer>", "", "answer"),
])
def test_extract(response, text, source):
    ex = extract(response)
    assert (ex.text, ex.source) == (text, source)


@pytest.mark.parametrize("text, expected", [
    ("B", "B"), ("b", "B"), ("B.", "B"), ("(B)", "B"), ("[B]", "B"), ("B)", "B"),
    ("**B**", "B"), ("b)", "B"), ("Answer: B", "B"), ("answer: (b)", "B"),
    ("The answer is (B).", "B"), ("The correct option is B because it says STOP 34", "B"),
    ("I think the answer is B", "B"), ("Option A is correct", "A"),
    ("\\boxed{B}", "B"), ("\\boxed{\\text{B}}", "B"), ("<answer>C</answer>", "C"),
    ("B. STOP 34", "B"), ("A red sign is shown, so C", "C"),
    ("Looking closer, (D) fits best.", "D"),
    # not a letter: a word, an article, several letters, a letter out of range
    ("Bread", None), ("A red sign", None), ("between A and B", None), ("I see it", None),
    ("the answer is a stop sign", None), ("F", None), ("", None), ("STOP 34", None),
])
def test_extract_choice_styles(text, expected):
    assert extract_choice(text, "ABCDE") == expected


def test_extract_choice_checks_option_text():
    assert extract_choice("b. stop 34", OPTIONS) == "B"          # lowercase + its own text
    assert extract_choice("b stop 43", OPTIONS) is None            # lowercase + another text


@pytest.mark.parametrize("text, value, unit", [
    ("12", 12, None), ("12 cm", 12, "cm"), ("-3.5 km/h", -3.5, "km/h"), ("$1,234.50", 1234.5, None),
    ("45°", 45, "°"), ("50%", 50, "%"), ("twenty-five", 25, None), ("three kg", 3, "kg"),
    ("3/4 cup", 0.75, "cup"), ("12 apples", 12, "apples"),
    ("5 or 6", None, None), ("one of them", None, None), ("STOP 34", None, None), ("", None, None),
])
def test_quantities(text, value, unit):
    q = as_quantity(text)
    if value is None:
        assert q is None
    else:
        assert (float(q.value), q.unit) == (value, unit)


@pytest.mark.parametrize("response, truth, correct, decisive", [
    # multiple choice: letters in many styles, option texts
    ("<answer>B</answer>", "B", True, True),
    ("<answer>(b)</answer>", "B", True, True),
    ("<answer>The answer is C.</answer>", "B", False, True),
    ("<answer>STOP 34</answer>", "B", True, True),                 # the correct option's text
    ("<answer>STOP 35</answer>", "B", False, True),                # another option's text
    ("<answer>a sign</answer>", "B", False, False),                # neither: a judge may map it
    ("<answer>B</answer>", "STOP 34", True, True),                 # truth as text, answer a letter
    ("<answer>C</answer>", "STOP 34", False, True),
    # numbers with tolerance, units, percentages, words
    ("<answer>74.6</answer>", "74.6", True, True),
    ("<answer>74.60000000001</answer>", "74.6", True, True),
    ("<answer>74.7</answer>", "74.6", False, True),
    ("<answer>12 cm</answer>", "0.12 m", True, True),
    ("<answer>120 mm</answer>", "12 cm", True, True),
    ("<answer>12 m</answer>", "12 cm", False, True),
    ("<answer>12 kg</answer>", "12 m", False, True),               # different dimensions
    ("<answer>12 apples</answer>", "12", True, True),              # an unknown unit is ignored
    ("<answer>50%</answer>", "0.5", True, True),
    ("<answer>0.5</answer>", "50%", True, True),
    ("<answer>45 degrees</answer>", "45°", True, True),
    ("<answer>30^\\circ</answer>", "30", True, True),
    ("<answer>twenty-five</answer>", "25", True, True),
    ("<answer>The total is $96.52.</answer>", "96.52", True, True),
    ("<answer>5 or 6</answer>", "5", False, False),
    ("<answer>about seventy</answer>", "70", False, False),
    # normalised strings, yes/no
    ("<answer>Stop 34.</answer>", "STOP 34", True, True),
    ("<answer>The red</answer>", "red", True, True),
    ("<answer>Yes, it is.</answer>", "yes", True, True),
    ("<answer>No</answer>", "yes", False, True),
    ("<answer>a car that is red</answer>", "red car", False, False),   # paraphrase: judge
    # math-verify-style equivalence
    ("<answer>\\frac{1}{2}</answer>", "0.5", True, True),
    ("<answer>\\frac12</answer>", "1/2", True, True),
    ("<answer>2\\sqrt{2}</answer>", "\\sqrt{8}", True, True),
    ("<answer>(x+1)^2</answer>", "x^2+2x+1", True, True),
    ("<answer>x = 5</answer>", "5", True, True),
    ("<answer>$\\frac{\\pi}{2}$</answer>", "pi/2", True, True),
    ("<answer>(1, 2)</answer>", "(1,2)", True, True),
    ("<answer>12</answer>", "(1,2)", False, True),
    ("<answer>\\{2, 1\\}</answer>", "\\{1, 2\\}", True, True),
    ("<answer>[0, 1)</answer>", "(0, 1]", False, True),
    ("<answer>\\sqrt{7}</answer>", "2\\sqrt{2}", False, True),
    # wrong formats
    ("", "B", False, True),
    ("<answer></answer>", "42", False, True),
    ("I am not sure.", "42", False, False),
])
def test_score_answer(response, truth, correct, decisive):
    options = OPTIONS if truth in ("B", "STOP 34") else None
    v = score_answer(response, truth, options)
    assert (v.correct, v.decisive) == (correct, decisive), v


def test_hostile_math_is_not_evaluated():
    for given in ("__import__('os').system('false')", "9^9^9^9", "(lambda: 1)()", "x" * 5000):
        assert not math_equal(given, "0")
        assert score_answer(f"<answer>{given}</answer>", "0").correct is False


def test_audit_entry_points_unchanged():
    # the audit's contract: final_answer then answers_match (see tests/test_audit.py)
    assert final_answer("<answer>\\boxed{74.6}</answer>") == "74.6"
    assert answers_match("The answer is (B).", "B", OPTIONS) == (True, "option letter B")
    assert answers_match("A. STOP 34", "B", OPTIONS)[0] is False
    assert answers_match("5,705", "5705") == (True, "numbers")
