"""The templated arithmetic training problems: deterministic, arithmetically correct, and disjoint from eval sets."""

from __future__ import annotations

import re

import pytest

from safegene_runtime import datasets as ds
from safegene_runtime.arith_train import (
    MULTI_SEED_BASE,
    MULTI_STEP_TEMPLATES,
    SEED_BASE,
    TEMPLATES,
    WorkedProblem,
    multi_step_problems,
    worked_problems,
)
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


def checked_equations(pid: str, p: WorkedProblem) -> list[tuple[str, str, str, str]]:
    """``p``'s equations, after the checks every worked problem of either registry passes: an integer answer in
    1..1000 stated last, every equation's numbers positive and its result right, the last result the answer."""
    assert isinstance(p.answer, int) and 1 <= p.answer <= 1000, pid
    assert p.solution.endswith(f"The answer is {p.answer}."), pid
    equations = EQUATION.findall(p.solution)
    assert equations, pid
    for a, op, b, c in equations:
        a_, b_, c_ = int(a), int(b), int(c)
        assert a_ > 0 and b_ > 0 and c_ > 0, pid
        assert _compute(a_, op, b_) == c_, f"{pid}: {a} {op} {b} = {c}"
    assert int(equations[-1][3]) == p.answer, pid
    return equations


def test_solutions_are_correct(problems):
    for pid, p in problems:
        assert 1 <= len(checked_equations(pid, p)) <= 3, pid


@pytest.mark.parametrize("registry", ["problems", "multi"])
def test_questions_mostly_distinct(registry, request):
    questions = {normalise(p.question) for _, p in request.getfixturevalue(registry)}
    assert len(questions) >= 0.95 * N


@pytest.mark.parametrize("registry", ["problems", "multi"])
@pytest.mark.parametrize("name", ["arith-val", "gsm8k-100"])
def test_no_overlap_with_eval_sets(registry, name, request):
    held_out = [normalise(item.prompt) for item in ds.load_named(name)]
    assert held_out
    for pid, p in request.getfixturevalue(registry):
        q = normalise(p.question)
        for h in held_out:
            # report only the id, never the held-out text
            assert h not in q, f"{pid} contains an item of {name}"


# --- three- and four-step problems (a separate registry) ---

SENTENCE_END = re.compile(r"(?<=\.) ")


@pytest.fixture(scope="module")
def multi() -> list[tuple[str, WorkedProblem]]:
    return multi_step_problems(N)


def test_multi_step_deterministic_unique_ids_and_every_template(multi):
    assert multi_step_problems(N) == multi
    assert len(multi) == N
    ids = [i for i, _ in multi]
    assert len(set(ids)) == N
    assert {i.rsplit("-", 1)[0] for i in ids} == set(MULTI_STEP_TEMPLATES)
    assert len(MULTI_STEP_TEMPLATES) >= 12
    assert not set(MULTI_STEP_TEMPLATES) & set(TEMPLATES)
    # far from the one- and two-step seeds, so no item of either registry shares a stream with the other
    assert MULTI_SEED_BASE - SEED_BASE >= 1000 * 1000
    assert multi_step_problems(50) == multi[:50]
    assert multi_step_problems(0) == []
    with pytest.raises(ValueError):
        multi_step_problems(-1)


def test_multi_step_solutions_are_correct(multi):
    for pid, p in multi:
        equations = checked_equations(pid, p)
        assert 3 <= len(equations) <= 4, pid
        # one equation per sentence, then the answer sentence
        *steps, last = SENTENCE_END.split(p.solution)
        assert last == f"The answer is {p.answer}.", pid
        assert len(steps) == len(equations), pid
        assert all(len(EQUATION.findall(s)) == 1 for s in steps), pid


def test_multi_step_questions_differ_from_worked_problems(problems, multi):
    short = {normalise(p.question) for _, p in problems}
    assert not any(normalise(p.question) in short for _, p in multi)
