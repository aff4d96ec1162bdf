"""The safety adapter without a task: A + λ·S served and measured on validation (issue 20 diagnostic).

    python -m experiments.smollm2.safety_alone --out DIR                 # λ = 1 and one adapter's shipped λ
    python -m experiments.smollm2.safety_alone --out DIR --like topic-clean

Why: every calibration candidate (v2a, v2b, v2a-shrink, v2c) trades harmful-val refusals against edgy-benign
refusals along one curve, which points at the safety adapter S itself. Serving S on A with no task delta shows what
S does on its own: a task folder whose LoRA has every ``lora_B`` set to zero (so the "task" adds nothing and
``<name>`` serves A itself) carries coefficients of λ = 1 on every layer (``zero-l1``) or the λ of a shipped
adapter's coefficients (``zero-<adapter>``); ``<name>+safegene`` is then A + λ·S, served as the demo serves
stacked adapters. The check is :func:`.family.check` (harmful-val, edgy-benign-val, the task's validation items),
then harmful-val-unseen alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from .family import FAMILY, check, new_family, table


def task_copy(src: Path, dst: Path, name: str, lambdas: dict[str, float], *, zero_delta: bool = True) -> Path:
    """A copy of task folder ``src`` at ``dst`` served as ``name`` with coefficients ``lambdas`` (the rest of
    ``src``'s coefficients file kept); ``zero_delta``: its LoRA adds nothing (every ``lora_B`` zero)."""
    shutil.copytree(src, dst)
    if zero_delta:
        import torch
        from safetensors.torch import load_file, save_file

        weights = load_file(str(dst / "adapter_model.safetensors"))
        save_file({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in weights.items()},
                  str(dst / "adapter_model.safetensors"), metadata={"format": "pt"})
    task = json.loads((dst / "task.json").read_text())
    (dst / "task.json").write_text(json.dumps({**task, "served_name": name}, indent=2) + "\n")
    coeffs = json.loads((dst / "coefficients.json").read_text())
    (dst / "coefficients.json").write_text(json.dumps({**coeffs, "layers": lambdas}, indent=1) + "\n")
    return dst


def layout(out: Path, like: str, assets: Path = FAMILY, safety: Path | None = None) -> Path:
    """A family folder with A's LoRA, the safety adapter (``assets``', or ``safety``) and two zero tasks:
    ``zero-l1`` (λ = 1 everywhere) and ``zero-<like>`` (the λ of ``like``'s shipped coefficients); both built on
    ``like``'s task folder."""
    root = new_family(out / "assets", assets, safety)
    src = assets / "tasks" / like
    shipped = json.loads((src / "coefficients.json").read_text())["layers"]
    task_copy(src, root / "tasks" / "zero-l1", "zero-l1", {k: 1.0 for k in shipped})
    task_copy(src, root / "tasks" / f"zero-{like}", f"zero-{like}", shipped)
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.smollm2.safety_alone", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="where the family folder and the checks go")
    ap.add_argument("--like", default="sentiment-clean", help="the shipped adapter whose λ and task items to use")
    a = ap.parse_args(argv)
    root = layout(a.out, a.like)
    print(table(check(root, a.out / "check", safe=True, plain=True)))
    print(table(check(root, a.out / "check-unseen", safe=True, plain=False, harmful="harmful-val-unseen",
                      harmful_only=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
