"""The rolling-hash repetition detector (thyme_train.repetition), with adversarial inputs."""

import random

import pytest

from thyme_train.repetition import RepetitionDetector, is_repetitive


def distinct(n: int, offset: int = 10**6) -> list[int]:
    """n tokens that never repeat (no substring occurs twice)."""
    return list(range(offset, offset + n))


def first_flag(tokens, **kwargs) -> int | None:
    """The output length at which the detector first flags, or None."""
    det = RepetitionDetector(**kwargs)
    for i, t in enumerate(tokens, 1):
        if det.feed(t):
            return i
    return None


@pytest.mark.parametrize("period", [1, 2, 7, 50, 300, 900])
def test_loops_of_any_period_are_caught_once_they_dominate(period):
    prefix = distinct(400)
    unit = distinct(period, offset=2 * 10**6)
    tokens = prefix + unit * (4000 // period + 3)
    at = first_flag(tokens)
    assert at is not None
    # The loop (from 400) covers > 50 % once n > 800, but a window of the smallest checked
    # length L >= period needs min_repeats (3) copies: at 400 + 2 * period + L. The detector
    # fires within one period of the later of the two (the window's phase must line up).
    L = min(x for x in RepetitionDetector().lengths if x >= period)
    assert 800 < at <= max(800, 400 + 2 * period + L) + period + 2, at


def test_exactly_half_is_not_more_than_half():
    tokens = distinct(100) + [7] * 101
    assert first_flag(tokens[:200]) is None          # the run covers 100 of 200: not > 50 %
    assert first_flag(tokens) == 201                 # one more token tips it


def test_varied_text_is_never_flagged():
    rng = random.Random(0)
    assert is_repetitive([rng.randrange(50_000) for _ in range(3196)]) is None
    # a 4-letter alphabet: every short substring recurs constantly, none covers half
    assert is_repetitive([rng.randrange(4) for _ in range(3196)]) is None
    # word-like frequencies (Zipf, s = 1, 5,000 types): the commonest type is ~11 % of tokens
    zipf = rng.choices(range(5000), weights=[1 / r for r in range(1, 5001)], k=3196)
    assert is_repetitive(zipf) is None


def test_hash_collisions_never_cause_a_stop():
    rng = random.Random(1)
    varied = [rng.randrange(1000) for _ in range(800)]
    det = RepetitionDetector(modulus=7)              # nearly every window collides
    assert det.extend(varied) is False
    assert det.collisions > 1000
    # and with collisions everywhere, a real loop is still found at the same point
    looped = distinct(100) + [5, 6, 7] * 150
    assert first_flag(looped, modulus=7) == first_flag(looped)


def test_two_copies_of_a_passage_are_not_a_loop():
    passage = distinct(500)
    assert is_repetitive(passage + passage) is None  # e.g. a code block resubmitted once
    assert is_repetitive(passage * 3) is not None
    assert is_repetitive(passage + passage, min_repeats=2) is not None


def test_short_outputs_and_scattered_repeats():
    assert is_repetitive("ok ok ok") is None         # below min_tokens
    # the same phrase many times, but spread through varied text: covers < 50 %
    phrase = [1, 2, 3, 4]
    tokens = []
    for i in range(100):
        tokens += phrase + distinct(6, offset=10**6 + 10 * i)
    assert is_repetitive(tokens) is None


def test_repeats_containing_the_word_answer_are_caught():
    # the original skipped any segment containing "answer"; a loop is a loop
    text = "Let me think. " + "The answer is <answer>B</answer>. " * 20
    f = is_repetitive(text)
    assert f is not None and f.coverage > 0.5


def test_finding_describes_the_repeat_and_the_detector_stays_stopped():
    tokens = distinct(50) + [9, 8] * 200
    det = RepetitionDetector()
    assert det.extend(tokens)
    f = det.finding
    assert f.start >= 50 and f.occurrences >= 3 and f.coverage > 0.5
    assert tokens[f.start:f.start + f.length] == tokens[f.start + 2:f.start + 2 + f.length]
    assert det.feed(123) and det.stopped


def test_stops_at_once_during_streaming():
    det = RepetitionDetector()
    flagged_at = None
    for i, t in enumerate(distinct(100) + [4] * 1000, 1):
        if det.feed(t):
            flagged_at = i
            break
    assert flagged_at == 201                          # the first token at which the run is > 50 %


@pytest.mark.parametrize("kwargs", [dict(threshold=0), dict(threshold=1.5), dict(min_len=0),
                                    dict(min_len=10, max_len=5), dict(growth=1.0)])
def test_bad_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        RepetitionDetector(**kwargs)
