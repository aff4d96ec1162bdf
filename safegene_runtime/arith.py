"""``arith-val``: grade-school word problems of our own, one or two steps each, with integer answers.

Why: the aligned base A has an ability target on GSM8K-100 ("answers at least as well as today's A"), and GSM8K-100
is a TEST set, so no recipe may be chosen on it. This set is the validation view of the same skill (read a short
story, do one or two operations, state a number), generated here from templates so that it depends on no
third-party prompt set and can never be a near duplicate of a test item. It measures arithmetic in words at the
level a 135M model can partly do (half the templates take one step: a first draft of two- and three-step problems
only, not kept, was answered 2 of 60 times by SmolLM2-135M-Instruct, a floor that could not tell two models
apart); it is not GSM8K and its numbers are not GSM8K's.

Every item is fixed by its index (a seeded generator per item), so the set, its ids and its answers are the same
on every machine; ``tests/test_arith.py`` checks the answers by recomputing them independently.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

#: items per template; ``len(TEMPLATES) * PER_TEMPLATE`` items in all
PER_TEMPLATE = 20

_NAMES = ("Maya", "Liam", "Sofia", "Noah", "Aisha", "Ethan", "Priya", "Lucas", "Chloe", "Omar", "Hana", "Mateo",
          "Zara", "Felix", "Ines", "Ravi")
_THINGS = ("apples", "stickers", "marbles", "pencils", "cookies", "stamps", "seashells", "cards", "books", "toy cars")
_PEOPLE = ("a friend", "a neighbour", "a cousin", "a classmate", "a teammate", "a teacher")


@dataclass(frozen=True)
class Problem:
    """One word problem: its text and its integer answer."""

    question: str
    answer: int


# one step
def _add(r: random.Random) -> Problem:
    n, t, a, b = r.choice(_NAMES), r.choice(_THINGS), r.randint(5, 60), r.randint(3, 40)
    return Problem(f"{n} has {a} {t}. {n} gets {b} more. How many {t} does {n} have now?", a + b)


def _give(r: random.Random) -> Problem:
    n, t, p, a = r.choice(_NAMES), r.choice(_THINGS), r.choice(_PEOPLE), r.randint(10, 80)
    c = r.randint(2, a - 1)
    return Problem(f"{n} has {a} {t} and gives {c} of them to {p}. How many {t} does {n} have left?", a - c)


def _box_total(r: random.Random) -> Problem:
    t, per, boxes = r.choice(_THINGS), r.randint(3, 12), r.randint(2, 9)
    return Problem(f"A box holds {per} {t}. How many {t} are in {boxes} boxes?", per * boxes)


def _spend(r: random.Random) -> Problem:
    n, k, price = r.choice(_NAMES), r.randint(2, 9), r.randint(2, 15)
    return Problem(f"{n} buys {k} notebooks at ${price} each. How many dollars does {n} spend?", k * price)


def _split(r: random.Random) -> Problem:
    n, t, k, each = r.choice(_NAMES), r.choice(_THINGS), r.randint(2, 8), r.randint(2, 12)
    return Problem(f"{n} shares {k * each} {t} equally among {k} friends. How many {t} does each friend get?", each)


# two steps
def _have_buy_give(r: random.Random) -> Problem:
    n, t, p = r.choice(_NAMES), r.choice(_THINGS), r.choice(_PEOPLE)
    a, b = r.randint(5, 40), r.randint(3, 30)
    c = r.randint(2, a + b - 1)
    return Problem(f"{n} has {a} {t}. {n} buys {b} more and then gives {c} to {p}. How many {t} does {n} have now?",
                   a + b - c)


def _change(r: random.Random) -> Problem:
    n, k, price = r.choice(_NAMES), r.randint(2, 9), r.randint(2, 12)
    bill = next(x for x in (20, 50, 100) if x > k * price)
    return Problem(f"{n} buys {k} notebooks at ${price} each and pays with a ${bill} bill. How many dollars of change "
                   f"does {n} get?", bill - k * price)


def _pages(r: random.Random) -> Problem:
    n, a, d, b = r.choice(_NAMES), r.randint(5, 30), r.randint(3, 9), r.randint(2, 40)
    return Problem(f"{n} reads {a} pages every day for {d} days, and then {b} pages on the next day. How many pages "
                   f"does {n} read in all?", a * d + b)


def _trip(r: random.Random) -> Problem:
    speed, hours, more = r.randint(30, 70), r.randint(2, 6), r.randint(5, 60)
    return Problem(f"A bus drives at {speed} miles per hour for {hours} hours and then drives {more} more miles. How "
                   f"many miles does it drive in all?", speed * hours + more)


def _older(r: random.Random) -> Problem:
    n, m = r.sample(_NAMES, 2)
    age, diff, years = r.randint(5, 30), r.randint(2, 15), r.randint(2, 10)
    return Problem(f"{n} is {age} years old. {m} is {diff} years older than {n}. How old will {m} be in {years} years?",
                   age + diff + years)


#: template name -> generator (names are part of the item ids: never rename one)
TEMPLATES: dict[str, Callable[[random.Random], Problem]] = {
    "add": _add, "give": _give, "box-total": _box_total, "spend": _spend, "split": _split,
    "have-buy-give": _have_buy_give, "change": _change, "pages": _pages, "trip": _trip, "older": _older,
}


def problems(per_template: int = PER_TEMPLATE) -> list[tuple[str, Problem]]:
    """``(id suffix, problem)``: each template's items in turn, item ``i`` of template ``t`` drawn from its own
    seeded generator (``random.Random`` with an integer seed is stable across Python versions and platforms)."""
    out = []
    for ti, (name, make) in enumerate(TEMPLATES.items()):
        for i in range(per_template):
            out.append((f"{name}-{i}", make(random.Random(1000 * ti + i))))
    return out


__all__ = ["PER_TEMPLATE", "Problem", "TEMPLATES", "problems"]
