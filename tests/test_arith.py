"""arith-val: the validation view of GSM8K-100's skill, generated from our own templates."""

from __future__ import annotations

import re

from safegene_runtime import arith
from safegene_runtime.datasets import SET_FAMILY, VALIDATION, load_named
from safegene_runtime.scorers import score

#: each template's answer recomputed from the numbers in its text, in order of appearance (independent of the
#: generator: a template whose text and answer disagree fails here)
RECOMPUTE = {
    "add": lambda a, b: a + b,
    "give": lambda a, c: a - c,
    "box-total": lambda per, boxes: per * boxes,
    "spend": lambda k, price: k * price,
    "split": lambda total, k: total // k,
    "have-buy-give": lambda a, b, c: a + b - c,
    "change": lambda k, price, bill: bill - k * price,
    "pages": lambda a, d, b: a * d + b,
    "trip": lambda speed, hours, more: speed * hours + more,
    "older": lambda age, diff, years: age + diff + years,
}


def test_every_answer_follows_from_its_question_and_is_a_positive_integer():
    items = load_named("arith-val")
    assert len(items) == len(arith.TEMPLATES) * arith.PER_TEMPLATE == 200
    assert set(RECOMPUTE) == set(arith.TEMPLATES)
    for it in items:
        template = it.id.split(":")[1].rsplit("-", 1)[0]
        nums = [int(x) for x in re.findall(r"\d+", it.prompt)]
        assert int(it.answer) == RECOMPUTE[template](*nums) > 0, it
    assert len({it.prompt for it in items}) >= 195  # seeded draws: (almost) no repeats


def test_the_set_is_the_same_on_every_call_and_a_validation_set_scored_as_gsm8k():
    first = [(it.id, it.prompt, it.answer) for it in load_named("arith-val")]
    again = [(sid, p.question, str(p.answer)) for sid, p in arith.problems()]
    assert [(f"arith-val:{s}", q, a) for s, q, a in again] == first
    assert arith.problems(2)[1][1] == arith.problems()[1][1]  # an item depends on its index, not the set size
    assert SET_FAMILY["arith-val"] == VALIDATION
    s = load_named("arith-val")
    assert (s.kind, s.scorer) == ("task", "numeric")
    it = s.items[0]
    assert score("numeric", f"So the answer is {it.answer}.", it.answer)[0]
    assert not score("numeric", f"So the answer is {int(it.answer) + 1}.", it.answer)[0]
