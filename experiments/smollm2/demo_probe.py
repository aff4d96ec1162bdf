"""The demo's two unseen-framing probes (``server/cli/demo.py``: ``CHOSEN_PROBE_ID``, chosen on validation, and
``UNSEEN_FRAMING``, held out) on A, each plain task adapter and the ``+safegene`` variants of v2 sweep candidates,
without starting a server (issue 20's demo line).

    python -m experiments.smollm2.demo_probe v2q-shrink v2a

Why: ``make demo`` serves only the shipped family; a candidate that is not shipped yet (it waits for its locked test)
can still be asked the demo's probe, to see what the demo would print with it. Float32 hooks
(:class:`~safegene_runtime.lora_forward.LoraForward`, as the candidates' validation checks' calibration sees them,
not the served bf16 form), greedy, 32 tokens, the keyword refusal judge. Two prompts: an illustration, never a
measurement, and nothing is chosen on them (the held-out one is held out from every choice:
``safegene_runtime/rephrase.py``).

    python -m experiments.smollm2.demo_probe --choose

prints the demo's second probe (``server/cli/demo.py`` ``CHOSEN_PROBE_ID``) as its rule chooses it from the shipped
coefficients' validation measurement (docs/results.md, "A second unseen-framing probe"); a test checks that the
demo's constant is that choice.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from safegene_runtime.datasets import framing_of

from .family import FAMILY, family_tasks
from .v2_sweep import CANDIDATES, OUT, safety_of, sweep_dir

MAX_TOKENS = 32
#: the shipped family's check (``v2a`` coefficients) on ``harmful-val-unseen``: A, each adapter alone and
#: ``+safegene``; since 2026-12-06 the family rebuilt on the -ms200-pt100 A (the previous family's: ``val-v2a-unseen``)
UNSEEN_BUNDLE = Path(__file__).resolve().parents[2] / "results" / "smollm2" / "val-family-ms200-pt100-unseen"
UNSEEN_SET = "harmful-val-unseen"


def base_name() -> str:
    """A's served name in the demo config (the bundle's rows carry served names)."""
    import yaml

    from server.cli.demo import DEMO_CONFIG

    return yaml.safe_load(DEMO_CONFIG.read_text())["base"]["served_name"]


def answered_rows(bundle: Path = UNSEEN_BUNDLE) -> dict[tuple[str, str], bool]:
    """(model, prompt id) -> answered (phrase judge), for every ``harmful-val-unseen`` row of a bundled check."""
    from safegene_runtime.outcomes import OUTCOMES

    from .v2_sweep import judged_rows

    answered = OUTCOMES["harmful_response_rate"].event
    return {(model, pid): bool(answered(row)) for (model, role, pid), row in judged_rows(bundle).items()
            if role == "harmful" and row["set"] == UNSEEN_SET}


def answered_by_framing(answered: dict[tuple[str, str], bool]) -> dict[str, dict[str, int]]:
    """framing -> model -> harmful prompts answered, from :func:`answered_rows`."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (model, pid), yes in answered.items():
        out[framing_of(pid)][model] += yes
    return out


def role_of(model: str, base: str) -> str:
    """``"A"``, ``"safe"`` (a ``+safegene`` variant) or ``"plain"`` (a task adapter alone), from a served name."""
    return "A" if model == base else "safe" if model.endswith("+safegene") else "plain"


def choose_probe(bundle: Path = UNSEEN_BUNDLE) -> tuple[str, str]:
    """``(framing, prompt id)`` by the rule on the results page (docs/results.md, "A second unseen-framing probe"):
    among the framings where A and every ``+safegene`` variant answered none, the one where the plain adapters
    answered the most in total; then its first prompt, in the set's order, that a plain adapter answered (the
    amended step 2: the rule as first written took the first prompt, which every plain adapter refuses too)."""
    from safegene_runtime.datasets import load_named

    answered, base = answered_rows(bundle), base_name()
    counts = answered_by_framing(answered)
    safe = [f for f, per in counts.items() if all(k == 0 for m, k in per.items() if role_of(m, base) != "plain")]
    if not safe:
        raise SystemExit(f"no framing in {bundle} is refused by A and every +safegene variant")

    def plain_answers(f: str) -> int:
        return sum(k for m, k in counts[f].items() if role_of(m, base) == "plain")

    framing = max(sorted(safe), key=plain_answers)  # sorted: a tie goes to the first name, not to dict order
    # amended step 2: a prompt some plain adapter answered (the line's third condition)
    eroded = {pid for (m, pid), yes in answered.items() if yes and role_of(m, base) == "plain"}
    first = next(it.id for it in load_named(UNSEEN_SET) if framing_of(it.id) == framing and it.id in eroded)
    return framing, first


def probe(candidates: list[str], out=OUT) -> list[tuple[str, str, str, str]]:
    """``(model, probe, verdict, answer)`` rows for both of the demo's harmful probes (the one chosen on validation,
    the held-out one): A, then per task adapter its plain form and each candidate's variant."""
    from safegene_runtime.adapters import load_adapter
    from safegene_runtime.calibration.teachers import generate
    from safegene_runtime.coefficients import load_coefficients
    from safegene_runtime.judges.refusal import refusal_match
    from safegene_runtime.lora_forward import LoraForward, encode_prompts, load_causal_lm
    from server.cli.demo import UNSEEN_FRAMING, chosen_probe
    from .v2_probe import aligned_A

    model, tok = load_causal_lm(aligned_A())
    probes = {"chosen": chosen_probe(), "held-out": UNSEEN_FRAMING}
    prompts = encode_prompts(tok, list(probes.values()), max_tokens=128)
    rows: list[tuple[str, str, str, str]] = []

    def ask(label: str) -> None:
        outs = generate(model, tok, prompts, max_new_tokens=MAX_TOKENS, batch_size=1, desc="",
                        progress=False)
        for which, ids in zip(probes, outs):
            text = tok.decode(ids, skip_special_tokens=True)
            rows.append((label, which, "refuses" if refusal_match(text) else "answers", " ".join(text.split())))

    ask("A")  # the bare model is A: no hooks yet
    safety = {c: load_adapter(safety_of(c)) for c in candidates}
    for name in family_tasks(FAMILY):
        task = load_adapter(FAMILY / "tasks" / name)
        for j, cand in enumerate(candidates):
            coeffs = load_coefficients(sweep_dir(out, cand) / name / "coefficients.json")
            with LoraForward.at(model, coeffs, fixed=task, scaled=safety[cand]) as lf:
                if j == 0:
                    with lf.mode(fixed=True, scaled=False):
                        ask(name)
                with lf.mode(fixed=True, scaled=True):
                    ask(f"{name}+safegene ({cand})")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.smollm2.demo_probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("candidates", nargs="*", metavar="CANDIDATE",
                    help=f"v2 sweep candidates with coefficients (one of: {', '.join(sorted(CANDIDATES))})")
    ap.add_argument("--choose", action="store_true",
                    help="print the demo's second probe as its rule chooses it from the shipped coefficients' "
                         f"validation check ({UNSEEN_BUNDLE.relative_to(UNSEEN_BUNDLE.parents[2])}), with the "
                         "answered counts per framing")
    a = ap.parse_args(argv)
    if a.choose:
        counts = answered_by_framing(answered_rows())
        models = sorted({m for per in counts.values() for m in per})
        print("| framing | " + " | ".join(models) + " |\n|---|" + "---|" * len(models))
        for f in sorted(counts):
            print(f"| {f} | " + " | ".join(str(counts[f].get(m, 0)) for m in models) + " |")
        framing, pid = choose_probe()
        print(f"\nchosen framing: {framing}; prompt: {pid}")
        return 0
    if not a.candidates or set(a.candidates) - set(CANDIDATES):
        ap.error(f"name one or more candidates of: {', '.join(sorted(CANDIDATES))} (or --choose)")
    print("| model | probe | verdict | answer (first 32 tokens) |\n|---|---|---|---|")
    for label, which, verdict, text in probe(a.candidates):
        print(f"| {label} | {which} | {verdict} | {text[:100].replace('|', '/')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
