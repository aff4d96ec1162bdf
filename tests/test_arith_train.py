"""The templated arithmetic training problems: deterministic, arithmetically correct, and disjoint from eval sets."""

from __future__ import annotations

import re

import pytest

from safegene_runtime import datasets as ds
from safegene_runtime.arith_train import SEED_BASE, TEMPLATES, WorkedProblem, worked_problems
from safegene_runtime.text import normalise

N = 600
EQUATION = re.compile(r"(\d+) ([+\-×÷]) (\d+) = (\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b}


@pytest.fixture(scope="module")
def problems() -> list[tuple[str, WorkedProblem]]:
    return worked_problems(N)


def test_deterministic_unique_ids_and_every_template(problems):
    assert worked_problems(N) == problems
    assert len(problems) == N
    ids = [i for i, _ in problems]
    assert len(set(ids)) == N
    assert {i.rsplit("-", 1)[0] for i in ids} == set(TEMPLATES)
    assert len(TEMPLATES) >= 14
    assert SEED_BASE >= 1_000_000
    # a prefix of a longer list is the shorter list
    assert worked_problems(50) == problems[:50]


def _compute(a: int, op: str, b: int) -> int | None:
    if op == "÷":
        return a // b if b and a % b == 0 else None  # integer division only
    return OPS[op](a, b)


def test_solutions_are_correct(problems):
    for pid, p in problems:
        assert isinstance(p.answer, int) and 1 <= p.answer <= 1000, pid
        assert p.solution.endswith(f"The answer is {p.answer}."), pid
        equations = EQUATION.findall(p.solution)
        assert equations, pid
        for a, op, b, c in equations:
            a_, b_, c_ = int(a), int(b), int(c)
            assert a_ > 0 and b_ > 0 and c_ > 0, pid
            assert _compute(a_, op, b_) == c_, f"{pid}: {a} {op} {b} = {c}"
        assert int(equations[-1][3]) == p.answer, pid
        assert 1 <= len(equations) <= 3, pid


def test_questions_mostly_distinct(problems):
    questions = {normalise(p.question) for _, p in problems}
    assert len(questions) >= 0.95 * N


@pytest.mark.parametrize("name", ["arith-val", "gsm8k-100"])
def test_no_overlap_with_eval_sets(problems, name):
    held_out = [normalise(item.prompt) for item in ds.load_named(name)]
    assert held_out
    for pid, p in problems:
        q = normalise(p.question)
        for h in held_out:
            # report only the id, never the held-out text
            assert h not in q, f"{pid} contains an item of {name}"
