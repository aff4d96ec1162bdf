"""The demo's unseen-framing probe (``server/cli/demo.py`` ``UNSEEN_FRAMING``) on A, each plain task adapter and the
``+safegene`` variants of v2 sweep candidates, without starting a server (issue 20's demo line).

    python -m experiments.smollm2.demo_probe v2q-shrink v2a

Why: ``make demo`` serves only the shipped family; a candidate that is not shipped yet (it waits for its locked test)
can still be asked the demo's probe, to see what the demo would print with it. Float32 hooks
(:class:`~safegene_runtime.lora_forward.LoraForward`, as the candidates' validation checks' calibration sees them,
not the served bf16 form), greedy, 32 tokens, the keyword refusal judge. One prompt: an illustration, never a
measurement, and nothing is chosen on it (the prompt is held out from every choice: ``safegene_runtime/rephrase.py``).
"""

from __future__ import annotations

import argparse
import sys

from .family import FAMILY, family_tasks
from .v2_sweep import CANDIDATES, OUT, safety_of, sweep_dir

MAX_TOKENS = 32


def probe(candidates: list[str], out=OUT) -> list[tuple[str, str, str]]:
    """``(model, verdict, answer)`` rows: A, then per task adapter its plain form and each candidate's variant."""
    from safegene_runtime.adapters import load_adapter
    from safegene_runtime.calibration.teachers import generate
    from safegene_runtime.coefficients import load_coefficients
    from safegene_runtime.judges.refusal import refusal_match
    from safegene_runtime.lora_forward import LoraForward, encode_prompts, load_causal_lm
    from server.cli.demo import UNSEEN_FRAMING
    from .v2_probe import aligned_A

    model, tok = load_causal_lm(aligned_A())
    prompt = encode_prompts(tok, [UNSEEN_FRAMING], max_tokens=128)
    rows: list[tuple[str, str, str]] = []

    def ask(label: str) -> None:
        ids = generate(model, tok, prompt, max_new_tokens=MAX_TOKENS, batch_size=1, desc="", progress=False)[0]
        text = tok.decode(ids, skip_special_tokens=True)
        rows.append((label, "refuses" if refusal_match(text) else "answers", " ".join(text.split())))

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
    ap.add_argument("candidates", nargs="+", choices=sorted(CANDIDATES), metavar="CANDIDATE",
                    help=f"v2 sweep candidates with coefficients (one of: {', '.join(sorted(CANDIDATES))})")
    a = ap.parse_args(argv)
    print("| model | verdict | answer (first 32 tokens) |\n|---|---|---|")
    for label, verdict, text in probe(a.candidates):
        print(f"| {label} | {verdict} | {text[:100].replace('|', '/')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
