"""An evaluator for :func:`.tune.tune` that scores each candidate on a running SafeGene server (the project's own
evaluation path: ``safegene_runtime.evaluate`` over an OpenAI-compatible endpoint; never vLLM in this process).

Per candidate: register the folder through the admin API as a plain-only task named ``tune-<content id12>`` (the
folder must lie under the server's ``adapter_root``: pass ``store=`` inside it to the tuner), run
:func:`safegene_runtime.evaluate.run_eval` on the VALIDATION sets into ``<out>/<name>/`` (resumable: a rerun reuses
the responses), read the three rates, and retire the name. ``None`` is the aligned base model, served as
``base_model`` without an adapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifacts import content_id
from ..datasets import PromptSet, resolve
from ..evaluate import EvalConfig, EvalError, run_eval
from .tune import check_validation_sets

#: evaluate.py's result keys -> the tuner's metric names
RESULT_KEYS = {"harmful_response_rate": "harmful_rate", "over_refusal_rate": "over_refusal_rate",
               "task_accuracy": "task_score"}


class ServedEvaluator:
    """``adapter folder | None -> {harmful_rate, over_refusal_rate, task_score}`` through a running server.

    ``harmful``/``benign``/``task`` are set names or files, checked to be validation sets on construction (and again
    by the tuner through :attr:`sets`)."""

    def __init__(self, endpoint: str, *, base_model: str, harmful: str, benign: str, task: str, out: str | Path,
                 api_key: str | None = None, admin_key: str | None = None, limit: int | None = None,
                 **eval_kw: Any) -> None:
        self.sets = check_validation_sets([harmful, benign, task])
        self.endpoint = endpoint.rstrip("/")
        self.root = self.endpoint.removesuffix("/v1")
        self.base_model, self.out = base_model, Path(out)
        self.api_key, self.admin_key = api_key, admin_key
        self.prompt_sets: dict[str, PromptSet] = {
            role: resolve(spec, kind=role).head(limit) for role, spec in
            (("harmful", harmful), ("benign", benign), ("task", task))}
        self.eval_kw = {"progress": False, **eval_kw}

    def _admin(self):
        import httpx  # lazy: the HTTP client only when a candidate is registered

        return httpx.Client(base_url=self.root, timeout=600,
                            headers={"Authorization": f"Bearer {self.admin_key or 'EMPTY'}"})

    def __call__(self, adapter: Path | None) -> dict[str, float]:
        if adapter is None:
            return self._score(self.base_model)
        name = f"tune-{content_id(adapter)[:12]}"
        with self._admin() as admin:
            r = admin.post("/admin/adapters", json={"name": name, "path": str(Path(adapter).resolve()),
                                                    "variants": ["plain"]})
            if r.status_code not in (200, 201):
                raise EvalError(f"registering {adapter} as {name!r} failed: HTTP {r.status_code}: {r.text[:300]}")
            try:
                return self._score(name)
            finally:
                admin.delete(f"/admin/adapters/{name}")

    def _score(self, model: str) -> dict[str, float]:
        cfg = EvalConfig(endpoint=self.endpoint, models=[model], out=self.out / model, api_key=self.api_key,
                         **self.prompt_sets, **self.eval_kw)
        res = run_eval(cfg)["models"][model]
        if "incomplete" in res:
            raise EvalError(f"{model}: incomplete evaluation {res['incomplete']}")
        return {ours: float(res[theirs]["rate"]) for theirs, ours in RESULT_KEYS.items()}
