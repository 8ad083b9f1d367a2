"""Answer extraction and matching (pipelines.core.answers, pipelines.core.mathverify): table-driven,
one row per style; the parity table against math-verify is tests/test_answer_parity.py."""

import multiprocessing
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipelines.core import mathverify
from pipelines.core.answers import (
    answers_match,
    as_quantity,
    extract,
    extract_choice,
    final_answer,
    looks_like_math,
    match_answer,
    math_equal,
    score_answer,
)
from pipelines.core.mathverify import MathVerifyPool, MathVerifyUnavailable, latex_input, math_check

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
    ("3/4 cup", 0.75, "cup"), ("12 apples", 12, "apples"), ("1 000", 1000, None),
    ("12 345.5 m", 12345.5, "m"), ("0,111", None, None),       # "0," is no thousands separator
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
    ("<answer>68 °F</answer>", "20 °C", False, False),          # never converted: the judge's
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


# ---------------------------------------------------------------------------------------------
# math-verify in the cascade (issue 23)
# ---------------------------------------------------------------------------------------------

ISSUE_PAIRS = [            # wrong by the old cascade (reward 0), right by math-verify
    ("\\pi/2", "1.5707963"), ("\\sqrt{2}", "1.41421356"), ("\\frac{5}{2}", "2\\frac{1}{2}"),
    ("5!", "120"), ("\\binom{5}{2}", "10"), ("\\sin^2 x + \\cos^2 x", "1"),
    ("x \\in [0,1]", "[0,1]"),
]


@pytest.mark.parametrize("given, truth", ISSUE_PAIRS)
def test_the_issues_pairs_are_right_and_decided_by_math(given, truth):
    v = score_answer(f"<answer>{given}</answer>", truth)
    assert (v.correct, v.decisive, v.how) == (True, True, "symbolic math"), v
    assert answers_match(given, truth) == (True, "symbolic math")
    assert math_equal(given, truth)


@pytest.mark.parametrize("given, truth, correct, how", [
    # an exact answer against a truth rounded to >= 2 places: right (the careful reader's call)
    ("-\\frac{2}{3}", "-0.6667", True, "numbers (the truth rounded to 4 decimals)"),
    ("\\frac{1}{3}", "0.333", True, "numbers (the truth rounded to 3 decimals)"),
    ("2/3", "0.67", True, "numbers (the truth rounded to 2 decimals)"),
    ("\\pi", "3.14", True, "numbers (the truth rounded to 2 decimals)"),
    ("\\frac{2}{3}", "0.66", False, "symbolic math"),        # rounds to 0.67, not 0.66
    ("\\frac{1}{3}", "0.3", False, "symbolic math"),         # one place: 0.3 may be exact
    ("0.674", "0.67", False, "numbers"),                     # a decimal must match, not round
    ("0.67", "\\frac{2}{3}", False, "symbolic math"),        # an approximation of an exact truth
])
def test_rounded_truths(given, truth, correct, how):
    v = score_answer(f"<answer>{given}</answer>", truth)
    assert (v.correct, v.decisive, v.how) == (correct, True, how), v


@pytest.mark.parametrize("text, mathy", [
    ("\\frac{1}{2}", True), ("x^2 + 2xy", True), ("(1, 2)", True), ("5!", True), ("sqrt(2)", True),
    ("x \\in [0,1]", True), ("-5", True), ("\\sin^2 x + \\cos^2 x", True),
    ("no", False), ("on", False), ("ab", False), ("red", False), ("5 or 6", False),
    ("12 cm", False), ("GN-4885", False), ("\\text{meters}", False), ("STOP 34", False),
    ("x" * 400, False), ("", False),
])
def test_only_math_goes_to_math_verify(text, mathy):
    assert looks_like_math(text) is mathy


@pytest.mark.parametrize("given, truth", [("on", "no"), ("ab", "ba"), ("top", "pot"),
                                          ("12 m", "12 cm"), ("GN-4885", "NG-4885")])
def test_what_math_verify_would_wrongly_accept_is_not_asked(given, truth):
    assert score_answer(f"<answer>{given}</answer>", truth).correct is False


def test_math_stage_verdicts_are_the_same_from_worker_threads():
    pairs = ISSUE_PAIRS + [("\\sqrt{7}", "2\\sqrt{2}"), ("(x+1)^2", "x^2+2x+1"), ("[0, 1)", "(0, 1]")]
    in_main = [math_check(g, t) for g, t in pairs]
    pool = MathVerifyPool(workers=2)
    try:
        with ThreadPoolExecutor(max_workers=3) as threads:
            in_threads = list(threads.map(
                lambda p: pool.check(latex_input(p[0]), latex_input(p[1])), pairs))
    finally:
        pool.close()
    assert [c.correct for c in in_threads] == [c.correct for c in in_main]
    assert [c.correct for c in in_main] == [True] * len(ISSUE_PAIRS) + [False, True, False]


@pytest.fixture
def quick_pool():
    pool = MathVerifyPool(workers=1, timeout_s=1.0)
    pool.check("$1$", "$1$")                               # started before the clock runs
    yield pool
    pool.close()


SLOW = "$(x+1)^{999}$"                                     # math-verify needs ~20 s for this


def test_a_check_that_runs_too_long_is_cut_off_from_a_worker_thread(quick_pool):
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as threads:
        check = threads.submit(quick_pool.check, SLOW, "$0$").result()
    elapsed = time.perf_counter() - t0
    assert (check.correct, check.decided, check.note) == (False, False, "timed out after 1 s")
    assert elapsed < 10, elapsed                           # not the 20 s math-verify would take
    assert quick_pool.timeouts == 1
    # the killed worker is replaced: the pool keeps serving
    assert quick_pool.check("$\\frac{1}{2}$", "$0.5$").correct


def test_a_timed_out_math_check_leaves_the_verdict_to_the_judge(monkeypatch, quick_pool):
    monkeypatch.setattr(mathverify, "_pool", quick_pool)
    monkeypatch.setattr(mathverify, "_memo", OrderedDict())
    v = score_answer("<answer>(x+1)^{999}</answer>", "x^2")
    assert (v.correct, v.decisive) == (False, False)
    assert v.how == "math-verify undecided: timed out after 1 s"


def test_a_worker_killed_from_outside_is_replaced(quick_pool):
    (worker,) = quick_pool._idle
    worker.proc.kill()
    worker.proc.wait()
    assert quick_pool.check("$2\\sqrt{2}$", "$\\sqrt{8}$").correct
    assert quick_pool.restarts == 1


def test_a_forked_child_starts_its_own_workers(quick_pool):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=lambda: queue.put(quick_pool.check("$5!$", "$120$").correct))
    child.start()
    assert queue.get(timeout=60) is True
    child.join(timeout=30)
    assert child.exitcode == 0
    assert quick_pool.check("$3!$", "$6$").correct         # the parent's worker still answers


def test_a_missing_math_verify_is_a_clear_error(monkeypatch, tmp_path):
    fake = tmp_path / "worker.py"
    fake.write_text('import json\nprint(json.dumps({"ready": False, '
                    '"error": "ModuleNotFoundError: No module named \'math_verify\'"}))\n')
    monkeypatch.setattr(mathverify, "WORKER", fake)
    with pytest.raises(MathVerifyUnavailable, match="No module named 'math_verify'.*pip install"):
        MathVerifyPool(workers=1).check("$1$", "$1$")


def test_huge_numbers_are_not_built():
    for given in ("9^9^9^9", "2^{123456}", "123456!", "2^{2^{2^{2^{2}}}}"):
        t0 = time.perf_counter()
        v = score_answer(f"<answer>{given}</answer>", "x+1")
        assert (v.correct, v.decisive, v.how) == (False, False, "math too large to evaluate safely")
        assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("given, truth, correct", [
    ("yes", "Yes, the light is on.", True), ("No", "Yes, the light is on.", False),
    ("no", "No parking", False),                           # a sign's text, not a no
])
def test_yes_no_truths_written_as_sentences(given, truth, correct):
    assert score_answer(f"<answer>{given}</answer>", truth).correct is correct


def test_match_answer_is_the_cascade_of_score_answer():
    for given, truth in ISSUE_PAIRS + [("B", "B"), ("12 cm", "0.12 m"), ("red car", "a red car")]:
        a, b = match_answer(given, truth), score_answer(f"<answer>{given}</answer>", truth)
        assert (a.correct, a.decisive, a.how) == (b.correct, b.decisive, b.how)


def test_a_forked_child_that_exits_leaves_its_parents_workers_alone(quick_pool):
    (worker,) = quick_pool._idle
    pid = os.fork()
    if pid == 0:                                           # the child: close as atexit would
        quick_pool.close()
        os._exit(0)
    os.waitpid(pid, 0)
    assert worker.alive() and quick_pool.check("$4!$", "$24$").correct
