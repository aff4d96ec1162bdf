"""Task scorers: exact-match rules per task, applied to a model's free-text answer.

* ``numeric`` (GSM8K style): the answer is the number after ``####``, else after the last "answer is/answer:",
  else in the last ``\\boxed{}``, else the last number in the response. Commas, ``$`` and ``%`` are ignored,
  fractions ``a/b`` are read as numbers, and ``18``, ``18.0`` and ``18.00`` are equal.
* ``label`` (classification): the label (from the item's ``labels``) that appears *earliest* in the response as a
  whole word, case-insensitive; a response naming no label is wrong.
* ``exact``: the normalised response (or its first non-empty line) equals the normalised answer.

Each scorer returns the extracted answer too, so a report can show why an answer was counted wrong.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from .text import normalise

_NUM = r"-?\$?\s?\d[\d,]*(?:\.\d+)?(?:\s?/\s?\d+)?%?|-?\$?\.\d+"
_NUM_RE = re.compile(_NUM)
_HASHES = re.compile(r"####\s*(" + _NUM + ")")
_ANSWER_IS = re.compile(r"answer(?: is|:| =|\s+is\s*:)\s*\**\s*(" + _NUM + ")", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{\s*(" + _NUM + r")\s*\}")

SCORERS = ("numeric", "label", "exact")


def parse_number(text: str) -> Fraction | None:
    """A number from "1,234", "$18.00", "50%", "3/4" (as an exact fraction), or None."""
    t = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip("%").rstrip(".")
    if not t:
        return None
    try:
        if "/" in t:
            a, b = t.split("/", 1)
            return Fraction(Decimal(a)) / Fraction(Decimal(b)) if Decimal(b) != 0 else None
        return Fraction(Decimal(t))
    except (InvalidOperation, ValueError, ZeroDivisionError):
        return None


def is_number(text: str) -> bool:
    return bool(text) and _NUM_RE.fullmatch(text.strip()) is not None and parse_number(text) is not None


def extract_number(response: str) -> str | None:
    """The answer's number as written (see module docstring for the order of rules)."""
    r = response or ""
    for rx in (_HASHES, _ANSWER_IS, _BOXED):
        found = rx.findall(r)
        if found:
            return found[-1].strip()
    nums = [m.group(0).strip() for m in _NUM_RE.finditer(r)]
    nums = [n for n in nums if parse_number(n) is not None]
    return nums[-1] if nums else None


def extract_label(response: str, labels: list[str] | tuple[str, ...]) -> str | None:
    """The label that appears earliest as a whole word in the response (case-insensitive), or None."""
    r = normalise(response or "")
    best: tuple[int, int, str] | None = None
    for lab in labels:
        n = normalise(lab)
        if not n:
            continue
        m = re.search(rf"(?<![\w]){re.escape(n)}(?![\w])", r)
        if m:
            key = (m.start(), -len(n), lab)  # earliest; on a tie the longer label ("very positive" over "positive")
            if best is None or key < best:
                best = key
    return best[2] if best else None


def score(scorer: str, response: str, answer: str, labels: list[str] | tuple[str, ...] | None = None
          ) -> tuple[bool, str | None]:
    """(correct, extracted answer) for one response under a named scorer."""
    if scorer == "numeric":
        got = extract_number(response)
        want = parse_number(answer)
        if want is None:
            raise ValueError(f"numeric scorer: reference answer {answer!r} is not a number")
        return (got is not None and parse_number(got) == want), got
    if scorer == "label":
        if not labels:
            raise ValueError("label scorer: the item has no 'labels' list")
        got = extract_label(response, labels)
        return (got is not None and normalise(got) == normalise(answer)), got
    if scorer == "exact":
        want = normalise(answer)
        full = normalise(response or "")
        first = next((ln for ln in (response or "").splitlines() if ln.strip()), "")
        if full == want:
            return True, response.strip()
        return normalise(first) == want, first.strip() or None
    raise ValueError(f"unknown scorer {scorer!r}; known: {', '.join(SCORERS)}")
