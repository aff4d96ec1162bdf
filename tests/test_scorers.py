"""Task scorers on tricky answers."""

from __future__ import annotations

from fractions import Fraction

import pytest

from safegene_runtime.scorers import extract_label, extract_number, is_number, parse_number, score


@pytest.mark.parametrize("response,answer,ok", [
    ("She sells 9 eggs at $2 each.\n#### 18", "18", True),
    ("#### 18\nThen 20 more words about 7 cats", "18", True),            # #### wins over the last number
    ("The answer is 18. Check: 9 * 2 = 18, and 3 + 4 = 7", "18", True),   # "answer is" wins over the last number
    ("So the total is $2,280.00", "2280", True),                          # thousands separator, $, decimals
    ("Answer: -3", "-3", True),
    ("It costs 1,000 dollars", "1000", True),
    ("We get \\boxed{42}", "42", True),
    ("3/4 of the cake", "0.75", True),                                    # fractions compare exactly
    ("The answer is 18.5", "18", False),
    ("First 12, then 5 left", "12", False),                               # the last number decides
    ("I don't know", "5", False),
    ("", "5", False),
    ("The result is 50%", "50", True),
    ("The answer is 7.", "7", True),                                      # sentence-final period
])
def test_numeric(response, answer, ok):
    assert score("numeric", response, answer)[0] is ok


def test_numeric_extraction_and_parsing():
    assert extract_number("x = 1,234.50 units") == "1,234.50"
    assert parse_number("1,234.50") == Fraction(246900, 200)
    assert parse_number("abc") is None and parse_number("1/0") is None
    assert is_number("2280") and is_number("-3.5") and not is_number("12 apples")
    with pytest.raises(ValueError, match="not a number"):
        score("numeric", "5", "five")


YN = ("yes", "no")


@pytest.mark.parametrize("response,answer,ok", [
    ("Yes", "yes", True),
    ("No.", "no", True),
    ("no, it is not", "yes", False),
    ("The answer is no, not yes.", "no", True),        # the earliest label counts
    ("Nope, definitely not.", "no", False),            # whole words only: "Nope" is not "no"
    ("I'm not sure.", "no", False),                    # no label at all
    ("YES!!! 7411 is prime", "yes", True),
    ("Knowing the data, yes.", "yes", True),           # "no" inside "Knowing" does not count
])
def test_label_yes_no(response, answer, ok):
    assert score("label", response, answer, YN)[0] is ok


def test_label_prefers_longer_label_at_same_position_and_needs_labels():
    labels = ("positive", "very positive", "negative")
    assert extract_label("Very positive review!", labels) == "very positive"
    assert extract_label("It is negative, not positive", labels) == "negative"
    with pytest.raises(ValueError, match="no 'labels'"):
        score("label", "yes", "yes", None)


@pytest.mark.parametrize("response,answer,ok", [
    ("Hello, world!", "hello world", True),
    ("dlrow olleh\nExplanation: I reversed it", "dlrow olleh", True),  # the first line may hold the answer
    ("The reversal is dlrow olleh", "dlrow olleh", False),
    ("", "x", False),
])
def test_exact(response, answer, ok):
    assert score("exact", response, answer)[0] is ok


def test_unknown_scorer():
    with pytest.raises(ValueError, match="unknown scorer"):
        score("fuzzy", "a", "a")
