"""Pilot (issue 20, 2026-12-04 night): a safety adapter filtered away from what edgy-benign prompts excite.

    python -m experiments.smollm2.safety_projection build --out DIR --mu 10     # covariances (cached), then S_mu
    python -m experiments.smollm2.safety_projection screen --out DIR --mu 10    # served check of S_mu (validation)

Why: the safety adapter S refuses 98.8% of edgy-benign-val on its own (docs/results.md, "SafeGene v2c"), so every
calibration of λ moves along one harmful/over-refusal curve. A degraded model that keeps A's edgy-benign answers did
not change S (the D' pilot). This pilot changes S directly, per linear module, in the spirit of Safe LoRA's
projection but data-aware: keep S's effect on the inputs harmful prompts produce, remove it on the inputs
edgy-benign prompts produce,

    ΔW' = argmin ‖(ΔW' − ΔW) X_h‖² + μ ‖ΔW' X_b‖² + ε ‖ΔW' − ΔW‖²_F  =  ΔW (C_h + εI) (C_h + μ C_b + εI)⁻¹

with C_h, C_b the (token-mean) second moments of the module's inputs in A over the harmful-align-train prompts
(plain and in one of A's trained framings) and over the edgy-benign training pool (:func:`.edgy_train
.edgy_benign_pool`): align-train data only, never a validation or test prompt. ε = 1e-3 · tr(C_h)/d keeps ΔW where
neither set has variance. Since ΔW = B·A the filter only changes A (A' = A·M): S_μ is still a rank-16 LoRA. Each
module is then rescaled so that ‖ΔW' X_h‖ = ‖ΔW X_h‖ (its effect on harmful inputs keeps its size, so λ = 1 stays
comparable). Token positions: every prompt token after the chat template's shared system prefix, up to and
including the assistant header (the position that picks the first answer token).

``screen`` serves A + S_μ (a zero task, λ = 1 on every layer: ``zero-l1``) and sentiment-clean + S_μ at λ = 1
(``sentiment-clean-l1``) with :func:`.family.check` (harmful-val, edgy-benign-val, sentiment-val), then
harmful-val-unseen alone; ``--mu 0`` screens S itself (the reference).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from safegene_runtime.paths import safegene_home

from .family import FAMILY, check, new_family, table
from .run import log

#: where the moments, the S_μ folders and the screens go by default (beside the v2 sweep's candidates)
OUT = safegene_home() / "experiments" / "smollm2" / "projection"

#: module -> the module whose input it shares (q/k/v read the same normed hidden state, gate/up too)
_SHARED_INPUT = {"k_proj": "q_proj", "v_proj": "q_proj", "up_proj": "gate_proj"}
EPS_REL = 1e-3


def prompts() -> tuple[list[str], list[str]]:
    """(harmful, edgy-benign) prompts for the second moments: align-train sets and the edgy training pool only."""
    from safegene_runtime.datasets import load_named
    from safegene_runtime.edgy_train import edgy_benign_pool
    from safegene_runtime.rephrase import FRAMING_NAMES, rephrase

    harm = [it.prompt for it in load_named("harmful-align-train")]
    framed = [rephrase(p, FRAMING_NAMES[i % len(FRAMING_NAMES)]) for i, p in enumerate(harm)]
    return harm + framed, list(edgy_benign_pool())


def _source(module: str) -> str:
    head, _, leaf = module.rpartition(".")
    return f"{head}.{_SHARED_INPUT[leaf]}" if leaf in _SHARED_INPUT else module


def second_moments(model, tok, texts: list[str], modules: list[str], batch: int = 16,
                   max_tokens: int = 160) -> dict[str, "torch.Tensor"]:
    """Token-mean ``x xᵀ`` (float64) of each module's input in ``model`` over ``texts`` (chat-templated; positions
    after the shared system prefix only), keyed by the module that owns the input (:func:`_source`)."""
    import torch

    from safegene_runtime.lora_forward import encode_prompts, left_pad

    ids = encode_prompts(tok, texts, max_tokens=max_tokens)
    probe = encode_prompts(tok, ["a", "b c"], max_tokens=max_tokens)
    prefix = next(i for i, (x, y) in enumerate(zip(*probe)) if x != y)
    owners = sorted({_source(m) for m in modules})
    acc = {m: None for m in owners}
    count = 0
    keep: dict[str, torch.Tensor] = {}

    def hook(name):
        def f(_mod, args):
            x = args[0][keep["mask"]].double()  # [tokens, in]
            acc[name] = x.T @ x if acc[name] is None else acc[name] + x.T @ x
        return f

    handles = [model.get_submodule(m).register_forward_pre_hook(hook(m)) for m in owners]
    try:
        with torch.no_grad():
            for i in range(0, len(ids), batch):
                chunk = ids[i:i + batch]
                x, mask = left_pad(chunk, tok.pad_token_id)
                m = mask.bool().clone()
                for r, seq in enumerate(chunk):  # drop the shared system prefix of each untruncated row
                    if len(seq) >= max_tokens:
                        continue
                    start = x.shape[1] - len(seq)
                    m[r, start:start + min(prefix, len(seq) - 1)] = False
                keep["mask"] = m
                count += int(m.sum())
                model(input_ids=x, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    return {m: (v / count) for m, v in acc.items()}


def moments(out: Path) -> dict[str, dict[str, "torch.Tensor"]]:
    """The harmful and edgy-benign second moments in A, cached in ``out/moments.pt`` (measured again when the
    family's safety adapter, and so its A, is another)."""
    import torch

    from safegene_runtime.adapters import load_adapter
    from safegene_runtime.artifacts import read_manifest
    from safegene_runtime.lora_forward import load_causal_lm
    from .v2_probe import aligned_A

    f = out / "moments.pt"
    family_id = read_manifest(FAMILY / "safety")["id"]  # S is made on this family's A
    if f.exists():
        cached = torch.load(f)
        if cached.get("family_safety_id") == family_id:
            return cached
        log(f"{f}: made for another family; measured again")
    modules = load_adapter(FAMILY / "safety").modules()
    model, tok = load_causal_lm(aligned_A())
    harm, edgy = prompts()
    t = time.time()
    res = {"harmful": second_moments(model, tok, harm, modules), "benign": second_moments(model, tok, edgy, modules),
           "counts": {"harmful": len(harm), "benign": len(edgy)}, "family_safety_id": family_id}
    log(f"second moments of {len(harm)} harmful and {len(edgy)} edgy-benign prompts in {time.time() - t:.0f}s")
    out.mkdir(parents=True, exist_ok=True)
    torch.save(res, f)
    return res


def filtered(a: "torch.Tensor", b: "torch.Tensor", c_h: "torch.Tensor", c_b: "torch.Tensor", mu: float
             ) -> tuple["torch.Tensor", dict]:
    """The LoRA pair (A', B) of ``ΔW' = ΔW (C_h + εI)(C_h + μC_b + εI)⁻¹``, rescaled so that its effect on the
    harmful inputs keeps ΔW's size (``‖ΔW' X_h‖ = ‖ΔW X_h‖``, measured through C_h); stats of the change."""
    import torch

    d = c_h.shape[0]
    eps = EPS_REL * float(torch.trace(c_h)) / d
    eye = torch.eye(d, dtype=c_h.dtype)
    m = torch.linalg.solve(c_h + mu * c_b + eps * eye, c_h + eps * eye, left=False)  # X M' = N  ->  (C_h+εI) M^-1
    a64, b64 = a.double(), b.double()
    a2 = a64 @ m

    def effect(aa, c):  # ‖B A x‖² averaged over tokens = tr(B A C Aᵀ Bᵀ)
        ba = b64 @ aa
        return float(torch.einsum("ij,jk,ik->", ba, c, ba))

    scale = (effect(a64, c_h) / max(effect(a2, c_h), 1e-30)) ** 0.5
    a2 = a2 * scale
    stats = {"scale": scale,
             "benign_effect_ratio": (effect(a2, c_b) / max(effect(a64, c_b), 1e-30)) ** 0.5,
             "harmful_over_benign_before": (effect(a64, c_h) / max(effect(a64, c_b), 1e-30)) ** 0.5,
             "harmful_over_benign_after": (effect(a2, c_h) / max(effect(a2, c_b), 1e-30)) ** 0.5}
    return a2.to(a.dtype), stats


def build(out: Path, mu: float) -> Path:
    """S_μ in ``out/safety-mu<μ>`` (a safety folder: S's manifest plus the projection, filtered weights; written
    whole or not at all), S itself at μ = 0."""
    import torch

    from safegene_runtime.adapters import load_adapter, save_adapter
    from safegene_runtime.artifacts import ArtifactWriter, atomic_copytree, describe_input, read_manifest

    folder = out / f"safety-mu{mu:g}"
    if (folder / "adapter_model.safetensors").exists():
        return folder
    src = FAMILY / "safety"
    if mu == 0:  # the reference: S itself
        return atomic_copytree(src, folder)
    mom = moments(out)
    s = load_adapter(src, dtype=torch.float32)
    weights, stats = {}, {}
    for mod in s.modules():
        a, b = s.weights[mod]
        a2, stats[mod] = filtered(a, b, mom["harmful"][_source(mod)], mom["benign"][_source(mod)], mu)
        weights[mod] = (a2, b)
    parent = read_manifest(src)
    with ArtifactWriter(folder, kind=parent["kind"],
                        lineage=[describe_input(src, "filtered_from"), *parent.get("lineage", [])]) as w:
        config = json.loads((src / "adapter_config.json").read_text())
        save_adapter(w.tmp, weights, base_model=config.get("base_model_name_or_path"), dtype=torch.bfloat16,
                     config=config)
        w.manifest.update({k: v for k, v in parent.items() if k not in w.manifest and k not in ("id", "created_at")})
        w.manifest["projection"] = {"mu": mu, "eps_rel": EPS_REL, "counts": mom["counts"], "modules": stats,
                                    "formula": "A' = A (C_h + eps I)(C_h + mu C_b + eps I)^-1, rescaled to "
                                               "|dW' X_h| = |dW X_h|", "by": "experiments.smollm2.safety_projection"}
    ratios = sorted(v["benign_effect_ratio"] for v in stats.values())
    log(f"S_mu{mu:g}: benign effect kept {ratios[0]:.2f}-{ratios[-1]:.2f} (median {ratios[len(ratios) // 2]:.2f})"
        " of S's at the same harmful effect")
    return folder


def screen(out: Path, mu: float, like: str = "sentiment-clean") -> tuple[dict, dict]:
    """A + S_μ (``zero-l1``) and ``like`` + S_μ at λ = 1 (``<like>-l1``): the family check, then harmful-val-unseen."""
    from .safety_alone import task_copy

    safety = build(out, mu)
    run = out / f"screen-mu{mu:g}"
    root = new_family(run / "assets", FAMILY, safety)
    src = FAMILY / "tasks" / like
    ones = {k: 1.0 for k in json.loads((src / "coefficients.json").read_text())["layers"]}
    task_copy(src, root / "tasks" / "zero-l1", "zero-l1", ones)
    task_copy(src, root / "tasks" / f"{like}-l1", f"{like}-l1", ones, zero_delta=False)
    main_check = check(root, run / "check", safe=True, plain=False)
    unseen = check(root, run / "check-unseen", safe=True, plain=False, harmful="harmful-val-unseen",
                   harmful_only=True)
    return main_check, unseen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.smollm2.safety_projection", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["build", "screen"])
    ap.add_argument("--out", type=Path, default=OUT, help=f"where moments, S_mu folders and screens go ({OUT})")
    ap.add_argument("--mu", type=float, action="append", required=True, help="filter strength (repeatable); 0: S")
    a = ap.parse_args(argv)
    if any(not mu >= 0 for mu in a.mu):  # also refuses nan
        ap.error(f"--mu must be >= 0 (0: S itself), got {', '.join(f'{mu:g}' for mu in a.mu)}")
    for mu in a.mu:
        if a.step == "build":
            print(build(a.out, mu))
        else:
            c, u = screen(a.out, mu)
            print(f"## mu = {mu:g}\n{table(c)}\n\n{table(u)}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
