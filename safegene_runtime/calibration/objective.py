"""Calibration's objective: the terms of L(λ) over a minibatch of shots, and the seeded minibatches.

The terms and their weights are described in :mod:`safegene_runtime.calibration.procedure`. How one is computed:
sequences are truncated (prompt to its last ``max_prompt_tokens`` tokens, targets to their first
``max_target_tokens`` tokens: a refusal is decided in its first few tokens); one forward pass per minibatch, left
padded, computes only the target positions' logits (``logits_to_keep``). Per-example losses are averaged over the
example's target tokens, then over examples.
"""

from __future__ import annotations

import torch

from ..lora_forward import left_pad
from .teachers import Shot

TERMS = ("refusal_margin", "refusal_ce", "task_kl", "benign_kl", "benign_margin", "refusal_onpolicy",
         "benign_onpolicy")


def target_logprobs(model, shots: list[Shot], pad: int) -> list[torch.Tensor]:
    """Log-probs [len(target), vocab] of each shot's target tokens given its prompt (one forward, left-padded)."""
    dev = next(model.parameters()).device
    seqs = [s.prompt + s.target[:-1] for s in shots]
    keep = max(len(s.target) for s in shots)
    ids, mask = left_pad(seqs, pad)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), use_cache=False,
                   logits_to_keep=keep).logits
    logits = logits[:, -keep:].float()
    return [torch.log_softmax(logits[i, keep - len(s.target) :], dim=-1) for i, s in enumerate(shots)]


def mean_logprob(lp: torch.Tensor, target: list[int]) -> torch.Tensor:
    """Mean log-prob of ``target`` under per-position log-probs ``lp`` ([len(target), vocab])."""
    return lp.gather(-1, torch.tensor(target, device=lp.device)[:, None]).mean()


def margins(model, shots: list[Shot], pad: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Mean log-prob of each shot's target minus that of its negative (one forward over both, already cut to
    margin_tokens), and the targets' log-probs."""
    lps = target_logprobs(model, shots + [Shot(s.prompt, s.negative or []) for s in shots], pad)
    n = len(shots)
    out = torch.stack([mean_logprob(lps[i], s.target) - mean_logprob(lps[n + i], s.negative or [])
                       for i, s in enumerate(shots)])
    return out, lps[:n]


def term_loss(model, term: str, shots: list[Shot], pad: int, margin_target: float = 0.0) -> torch.Tensor:
    """One term of :data:`TERMS` (unweighted) over a minibatch of its shots."""
    softplus = torch.nn.functional.softplus
    if term in ("refusal_margin", "refusal_onpolicy", "benign_onpolicy"):
        # A's refusal over the task model's compliant answer (margin), or over the current model's own non-refusal
        # (on-policy: the negatives are regenerated as λ moves, :func:`.teachers.onpolicy_shots`); benign on-policy:
        # A's answer over the current model's own refusal (:func:`.teachers.benign_onpolicy_shots`)
        m, _ = margins(model, shots, pad)
        return softplus(margin_target - m).mean()
    if term == "benign_margin":
        # Mirror image: prefer A's answer to a refusal (opening tokens) and to an immediate EOS (first token).
        vs_refusal, lps = margins(model, shots, pad)
        vs_stop = torch.stack([lp[0][s.target[0]] - torch.logsumexp(lp[0][list(s.stop)], dim=0)
                               for s, lp in zip(shots, lps)])
        return (0.5 * (softplus(-vs_refusal) + softplus(-vs_stop))).mean()
    lps = target_logprobs(model, shots, pad)
    per = []
    for s, lp in zip(shots, lps):
        if term == "refusal_ce":
            tgt = torch.tensor(s.target, device=lp.device)
            per.append(-lp.gather(-1, tgt[:, None]).mean())
        else:
            t = s.teacher.to(lp.device)  # type: ignore[union-attr]
            per.append((t.exp() * (t - lp)).sum(-1).mean())
    return torch.stack(per).mean()


def group_shrinkage(lambdas: torch.Tensor, groups: int) -> torch.Tensor:
    """Σ over layers and groups of (λ_l,g − mean_g λ_l,g)²: with one λ per module group of a layer (``lambdas`` laid
    out layer-major, ``groups`` per layer), an L2 pull of each group's λ towards the layer's shared value, so the
    split only departs from one λ per layer where the loss pays for it. 0 for one group."""
    per_layer = lambdas.reshape(-1, groups)
    return ((per_layer - per_layer.mean(dim=1, keepdim=True)) ** 2).sum()


class Batches:
    """Seeded cycling minibatches over one term's shots (each Adam step uses one minibatch per term, cycling
    through a seeded permutation; the full set when it is smaller than ``size``)."""

    def __init__(self, n: int, size: int, gen: torch.Generator) -> None:
        self.n, self.size, self.gen = n, max(1, size), gen
        self.order: list[int] = []

    def next(self) -> list[int]:
        if self.size >= self.n:
            return list(range(self.n))
        out: list[int] = []
        while len(out) < self.size:
            if not self.order:
                self.order = torch.randperm(self.n, generator=self.gen).tolist()
            out.append(self.order.pop(0))
        return out


__all__ = ["TERMS", "target_logprobs", "mean_logprob", "margins",
           "term_loss", "group_shrinkage", "Batches"]
