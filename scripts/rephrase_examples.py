"""Write docs/rephrase-examples.md: the first 10 prompts of each framing in ``harmful-val-rephrased``, source and
rephrasing side by side, so a reader can judge how the templates read without running anything.

    .venv/bin/python scripts/rephrase_examples.py > docs/rephrase-examples.md
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from safegene_runtime.datasets import load_named  # noqa: E402
from safegene_runtime.rephrase import CONTEXT_SEPARATOR, FRAMING_NAMES  # noqa: E402


def main(per_framing: int = 10) -> None:
    val = {it.id: it for it in load_named("harmful-val")}
    reph = load_named("harmful-val-rephrased")
    print("# Rephrasing examples (issue 20)\n")
    print(f"The first {per_framing} prompts of each framing in `harmful-val-rephrased`, source → rephrasing (a "
          "HarmBench context\nis shown as `[context] …`). Written by `scripts/rephrase_examples.py`; the templates "
          "are `FRAMINGS` in\n`safegene_runtime/rephrase.py`; the set and the split: docs/evaluation.md#splits.\n")
    for f in FRAMING_NAMES:
        rows = [it for it in reph if it.meta["framing"] == f]
        print(f"## `{f}` ({len(rows)} in the set)\n")
        for it in rows[:per_framing]:
            src, out = val[it.meta["source_id"]].prompt, it.prompt
            if CONTEXT_SEPARATOR in src:
                src = "[context] … " + src.rsplit(CONTEXT_SEPARATOR, 1)[1]
                out = "[context] … " + out.rsplit(CONTEXT_SEPARATOR, 1)[1]
            print(f"* {src}\n  → {out}")
        print()


if __name__ == "__main__":
    main()
