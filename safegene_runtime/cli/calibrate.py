"""``safegene calibrate``: stage 3, few-shot per-layer coefficients for one task adapter.

The procedure's flags (``--steps``, ``--lr``, ...) are derived from the fields of
:class:`~safegene_runtime.calibration.CalibrationConfig`: its defaults, its choices and its help text, so no
default is restated here (``tests/test_calibration_config.py`` checks it).
"""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import Field, fields
from pathlib import Path
from typing import Any, Callable

from ..calibration.config import CalibrationConfig, CalibrationConfigError

DESCRIPTION = """\
Learn one coefficient lambda_l >= 0 per layer of the safety adapter for this task adapter, from a few shots: on
harmful shots the task model complies with, prefer the aligned base's own refusal over the task model's answer
(--refusal-loss margin; 'ce' trains on the base's refusal wording instead); every --onpolicy-every steps regenerate
the model's own answers to the harmful shots and push each non-refusal (fragments, empty replies) below the base's
refusal; keep the task adapter's own answers to task shots (KL) and the base's own answers to benign shots (KL), and
prefer the base's answer to a refusal on them (--benign-contrast); the benign shots are the given ones plus
--benign-edgy-shots prompts drawn from the shipped edgy-benign training pool (--benign-source; never a validation or
test prompt); a small penalty on lambda. Only the lambdas are trained (Adam, clamped to [0, lambda-max]); the models
stay frozen. Further options: --granularity attn-mlp (one lambda for the attention and one for the MLP modules of
each layer), --stop-tol (stop once the loss flattens; --steps is then the cap), --layers (a subset, or the safety
adapter's selection). Writes a coefficients.json (schema safegene.coefficients/v1; v2 with per-group lambdas) for
`safegene stack` / `safegene merge`, with the config and its digest.

The default procedure is SafeGene v2 (CalibrationConfig's defaults, safegene_runtime/calibration/config.py; chosen
on validation sets, its numbers in docs/results.md, section "SafeGene v2"):
{default}."""


def flag(name: str) -> str:
    """The command-line flag of a CalibrationConfig field."""
    return "--" + name.replace("_", "-")


def _floats(text: str) -> float | tuple[float, ...]:
    xs = tuple(float(x) for x in text.split(",") if x.strip())
    return xs[0] if len(xs) == 1 else xs


def _layers(text: str) -> tuple[int, ...] | str:
    return text if text in ("all", "selection") else tuple(int(x) for x in text.split(",") if x.strip())


#: fields whose flag is a comma list, read once the flags are parsed (so a bad one is a one-line error, exit 1)
_LISTS: dict[str, tuple[Callable[[str], Any], str]] = {
    "float | tuple[float, ...]": (_floats, "a number or comma-separated numbers"),
    "tuple[int, ...] | str | None": (_layers, "'all', 'selection' or comma-separated integers"),
}


def _parser_of(f: Field) -> Callable[[str], Any]:
    """How argparse reads a field's flag (its type annotation decides; comma lists: ``_LISTS``)."""
    kind = str(f.type)
    if kind in _LISTS:
        return str
    return {"int": int, "int | None": int, "float": float, "str": str}[kind]


def _shown(f: Field) -> str:
    """A field's default as the command line writes it."""
    v = f.default
    if v is None:
        return ("0: " if str(f.type) == "int | None" else "") + f.metadata["none_means"]
    if isinstance(v, tuple):
        return ",".join(f"{x:g}" for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per CalibrationConfig field, with the field's default, choices and help."""
    g = p.add_argument_group("the procedure (CalibrationConfig fields; default: the default procedure)")
    for f in fields(CalibrationConfig):
        zero = f"; 0: {f.metadata['none_means']}" if str(f.type) == "int | None" else ""
        kw: dict[str, Any] = {"default": f.default, "dest": f.name, "type": _parser_of(f),
                              "help": f"{f.metadata['help']}{zero} (default {_shown(f)})"}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if "metavar" in f.metadata:
            kw["metavar"] = f.metadata["metavar"]
        g.add_argument(flag(f.name), **kw)


def config_from_args(args: argparse.Namespace) -> CalibrationConfig:
    """The CalibrationConfig the flags describe (an error names the flag)."""
    values: dict[str, Any] = {}
    for f in fields(CalibrationConfig):
        v = getattr(args, f.name)
        kind = str(f.type)
        if kind in _LISTS and isinstance(v, str):
            read, expected = _LISTS[kind]
            try:
                v = read(v)
            except ValueError:
                raise ValueError(f"{flag(f.name)} {v!r}: expected {expected}") from None
        elif kind == "int | None" and v == 0:
            v = None  # 0: the field's None (its none_means)
        values[f.name] = v
    try:
        return CalibrationConfig(**values)
    except CalibrationConfigError as e:
        raise ValueError(f"{flag(e.field)}: {e}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser("calibrate", help="stage 3: few-shot per-layer safety coefficients for a task adapter",
                              description=DESCRIPTION.format(default=textwrap.fill(CalibrationConfig().describe(), 116)),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, type=Path, help="aligned base model folder A")
    p.add_argument("--task", required=True, type=Path, help="task LoRA adapter folder T")
    p.add_argument("--safety", required=True, type=Path, help="safety adapter folder S (with its selection)")
    p.add_argument("--harmful-shots", required=True, type=Path, help="harmful prompts (JSONL or CSV)")
    p.add_argument("--task-shots", required=True, type=Path, help="task prompts (JSONL or CSV)")
    p.add_argument("--benign-shots", type=Path, help="general benign prompts (JSONL or CSV)")
    p.add_argument("--out", required=True, type=Path, help="coefficients.json to write")
    p.add_argument("--max-shots", type=int, help="use at most N shots from each file")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--report-losses", action="store_true",
                   help="also compute every loss term over all shots before and after the steps and at lambda=0 "
                        "(written to the coefficients file and printed; diagnostics only, the lambdas do not "
                        "change; about a third more time)")
    add_config_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    # lazy: calibration imports torch; `safegene --help` must stay instant (cli/__init__.py)
    from ..artifacts import sha256_file
    from ..calibration import calibrate
    from ..prompts import load_examples

    if args.out.exists() and args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give the coefficients.json file path")
    config = config_from_args(args)
    files = {"harmful": args.harmful_shots, "task": args.task_shots, "benign": args.benign_shots}
    shots = {k: load_examples(p, limit=args.max_shots) if p else None for k, p in files.items()}
    sources = {k: {"file": str(p.resolve()), "file_sha256": sha256_file(p)} for k, p in files.items() if p}
    c = calibrate(args.base, args.task, args.safety, shots["harmful"], shots["task"], shots["benign"], config,
                  device=args.device, out=args.out, shot_sources=sources, report_losses=args.report_losses)
    loss = c.meta["loss"]
    print("lambda: " + ", ".join(f"{l}:{v:.3f}" for l, v in sorted(c.layers.items())))
    if c.groups:
        print("lambda (attn/mlp): " + ", ".join(f"{l}:{g.get('attn', 0):.3f}/{g.get('mlp', 0):.3f}"
                                                 for l, g in sorted(c.groups.items())))
    stopped = loss["stopped"]
    totals = ", ".join(f"{k.replace('_', ' ').replace('at zero', 'at lambda=0')} {loss[k]['total']:.4f}"
                       for k in ("before", "after", "at_zero") if loss.get(k))
    print(f"loss: {totals or 'not computed (--report-losses)'}; stopped after {stopped['steps']} step(s): "
          + ("the loss flattened (stop_tol)" if stopped["reason"] == "plateau" else "the step budget"))
    if "onpolicy" in c.meta:
        o = c.meta["onpolicy"]
        zero = f"{o['at_zero']}/{o['of']} at lambda=0, " if o["at_zero"] is not None else f"of {o['of']}: "
        print(f"on-policy: harmful shots answered without a refusal: {zero}"
              + " -> ".join(f"{s['non_refusals']} (step {s['step']})" for s in o["non_refusals"]))
    if "starts" in c.meta:
        print("starts: " + ", ".join(f"from {s['init']:g}: {s['after']:.4f}" for s in c.meta["starts"])
              + f"; kept the start {c.meta['chosen_init']:g}")
    print(args.out)
    return 0
