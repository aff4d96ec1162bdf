"""Write docs/rephrase-examples.md: the first prompts of each framing in ``harmful-val-rephrased`` (the framings
the robust A is trained on) and ``harmful-val-unseen`` (framings nothing trains on), source and rephrasing side by
side, so a reader can judge how the templates read without running anything.

    .venv/bin/python scripts/rephrase_examples.py > docs/rephrase-examples.md
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from safegene_runtime.datasets import load_named  # noqa: E402
from safegene_runtime.rephrase import CONTEXT_SEPARATOR, FRAMING_NAMES, UNSEEN_FRAMING_NAMES  # noqa: E402

#: (set, its framings, the templates' name in rephrase.py, examples per framing)
SETS = (("harmful-val-rephrased", FRAMING_NAMES, "FRAMINGS", 10),
        ("harmful-val-unseen", UNSEEN_FRAMING_NAMES, "UNSEEN_FRAMINGS", 5))


def main() -> None:
    val = {it.id: it for it in load_named("harmful-val")}
    print("# Rephrasing examples (issue 20)\n")
    print("The first prompts of each framing in the two framed validation sets, source → rephrasing (a HarmBench "
          "context\nis shown as `[context] …`). Written by `scripts/rephrase_examples.py`; the templates are in\n"
          "`safegene_runtime/rephrase.py`; the sets and the split: docs/evaluation.md#splits.\n")
    for name, framings, templates, per_framing in SETS:
        reph = load_named(name)
        print(f"# `{name}` (`{templates}`)\n")
        for f in framings:
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
