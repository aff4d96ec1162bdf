"""The staged SmolLM2 pipeline: aligned base A, degraded D, task adapters, SafeGene, baselines, evaluation.

    python -m experiments.smollm2.run [--stages align,degrade,tasks,...] [--fast] [--tasks sentiment,topic]

Each stage writes ``$SAFEGENE_HOME/experiments/smollm2/<profile>/<stage>-<hash>`` where the hash covers the stage's
parameters, the digests of its prompt data and the ids of the stages it reads. A finished stage is found by its
hash and skipped, so an interrupted run resumes where it stopped and a changed parameter rebuilds only what
depends on it. Stages are written to a temp folder and renamed, so a half-built stage never looks finished.
``--profile full`` (default) is the pilot's recipe; ``--profile demo`` a much smaller one that builds the demo family
in well under an hour on a shared 2-core CPU; ``--fast`` (= ``--profile fast``) shrinks every step count and set
size (a smoke run of the whole chain, minutes, not meaningful numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from safegene_runtime.artifacts import atomic_write_json, fingerprint
from safegene_runtime.calibration import CalibrationConfig
from safegene_runtime.digests import json_digest as digest  # the stage hashes: never change what it computes
from safegene_runtime.paths import safegene_home

from . import data, refusals, seeds, tasks
from .train import SFTConfig

RECIPE = "smollm2-study/v1"  # bump to invalidate every cached stage after a change in what a stage means
ALL_STAGES = ["answers", "align", "degrade", "tasks", "safety", "select", "calibrate", "baselines", "eval"]
TASKS = ["sentiment", "topic", "reverse"]
SETTINGS = list(tasks.SETTINGS)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class StageMissing(LookupError):
    """A stage that an export asked for has not been built (``Stages.cached_only``)."""


class Stages:
    """Content-hash cache of stage folders."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.timings: list[tuple[str, float, bool]] = []
        self.cached_only = False  # export sets this: an export must never start training

    @staticmethod
    def hash(name: str, params: dict, inputs: dict[str, str]) -> str:
        """The stage's hash (its folder is ``<name>-<hash>``): over the recipe, its parameters and its inputs."""
        return digest({"recipe": RECIPE, "stage": name, "params": params, "inputs": inputs})[:12]

    def folder(self, name: str, params: dict, inputs: dict[str, str]) -> Path:
        """Where stage ``name`` with these params/inputs lives (built or not)."""
        return self.root / f"{name}-{self.hash(name, params, inputs)}"

    def run(self, name: str, params: dict, inputs: dict[str, str], build: Callable[[Path], dict]) -> Path:
        """Return the folder of stage ``name`` for these params/inputs, building it if absent."""
        h = self.hash(name, params, inputs)
        dest = self.folder(name, params, inputs)
        if (dest / "stage.json").is_file():
            log(f"{name}: cached ({dest.name})")
            self.timings.append((name, json.loads((dest / "stage.json").read_text())["seconds"], True))
            return dest
        if self.cached_only:
            raise StageMissing(f"stage {name} ({dest.name}) is not built; run the pipeline first")
        log(f"{name}: building -> {dest.name}")
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=self.root))
        t0 = time.time()
        try:
            result = build(tmp) or {}
            secs = time.time() - t0
            atomic_write_json(tmp / "stage.json", {"stage": name, "hash": h, "params": params, "inputs": inputs,
                                                   "seconds": round(secs, 1), "result": result})
            if dest.exists():
                shutil.rmtree(dest)
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log(f"{name}: done in {secs:.0f}s")
        self.timings.append((name, secs, False))
        return dest


# --------------------------------------------------------------------------------------------- parameters
PROFILES = ("full", "demo", "fast", "robust")


def profile_name(profile: bool | str) -> str:
    """``True``/``False`` (the old ``fast`` flag) or a profile name -> a profile name."""
    if isinstance(profile, bool):
        return "fast" if profile else "full"
    if profile not in PROFILES:
        raise SystemExit(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    return profile


def params(profile: bool | str) -> dict:
    """Every knob of the study in one place (these values are hashed into the stage names).

    ``full``: the pilot's recipe (docs/study-log.md, "Recipe: `full` profile against the pilot"). ``demo``: a much
    smaller recipe that fits in about 45 minutes on the shared, oversubscribed 2-core machine (we got ~12 GFLOP/s
    there): 64 benign self-answers, 64 refusal pairs and 16 alignment steps; no degrade stage (the original SmolLM2,
    which complies with ~98% of HarmBench in the pilot, plays D, so the safety vector is the rank-16 SVD of A -
    original); 16+16 selection probes; task LoRAs with 32 steps of batch 4; calibration on 8+8+8 shots, 10 steps.
    Stages live in ``<home>/experiments/smollm2/demo``.
    ``fast``: tiny smoke run, meaningless numbers.
    ``robust``: ``full`` with issue 20's alignment recipe (:mod:`.robust`): every harmful-align-train prompt plain
    and in ``framings_per_prompt`` rephrasings with refusals, the original model's answers to the benign alignment
    prompts and to our edgy-benign training prompts (stage ``self-answers``; ``edgy_repeat`` copies of each).
    Its knobs are chosen on the validation sets (docs/results.md, "Robust aligned base (issue 20)")."""
    profile = profile_name(profile)
    if profile == "robust":
        p = params("full")
        p["self_answers"] = {"n_benign": 218, "max_tokens": 64, "dtype": "float32"}
        from .robust import RobustAlign

        p["align"] = RobustAlign().params()  # the pilot's knobs; variants: with_overrides(--variant, --set)
        return p
    if profile == "demo":
        p = params("full")
        p["answers"] = {"n_benign": 64, "n_harm": 0, "n_mix": 0, "max_tokens": 48, "dtype": "float32"}
        p["align"] = {"n_harm": 64, "steps": 16, "lr": 5e-4, "batch_size": 8, "max_len": 96}
        p["safety"] = {"rank": 16, "degraded": "original"}  # no degrade stage: the original model plays D
        p["select"] = {"n_harm": 16, "n_benign": 16, "top_k": 15}
        p["task"] |= {"steps": 32, "batch_size": 4, "lr": 5e-4, "max_len": 96}
        p["calibrate"] = {"k": 8, "steps": 10, "max_new_tokens": 16, "batch_size": 4}
        p["eval"] = {"n_harmful": 40, "n_benign": 40, "n_task": 40, "max_tokens": 32}
        return p
    if profile == "fast":
        return {
            "answers": {"n_benign": 16, "n_harm": 16, "n_mix": 8, "max_tokens": 24, "dtype": "float32"},
            "align": {"n_harm": 16, "steps": 3, "lr": 2e-4, "batch_size": 4, "max_len": 96},
            "degrade": {"steps": 2, "lr": 2e-5, "batch_size": 4, "max_len": 96, "save_dtype": "float32"},
            "task": {"n_train": 32, "n_test": 16, "steps": 3, "lr": 2e-4, "batch_size": 4, "max_len": 96,
                     "mix_fraction": 0.1},
            "safety": {"rank": 16},
            "select": {"n_harm": 8, "n_benign": 8, "top_k": 15},
            "calibrate": {"k": 4, "steps": 2, "max_new_tokens": 8},
            "eval": {"n_harmful": 8, "n_benign": 8, "n_task": 8, "max_tokens": 24},
        }
    return {
        "answers": {"n_benign": 218, "n_harm": 240, "n_mix": 45, "max_tokens": 64, "dtype": "float32"},
        "align": {"n_harm": 250, "steps": 110, "lr": 2e-4, "batch_size": 8, "max_len": 128},
        "degrade": {"steps": 50, "lr": 2e-5, "batch_size": 8, "max_len": 128, "save_dtype": "float32"},
        # 64 steps × 8 (1.3 epochs of 400 pairs), not the pilot's 120: the sentiment loss was below 0.004 by step
        # 21, and the whole study had to fit one 3-hour session on this machine (6 adapters × ~3 s per step).
        "task": {"n_train": 400, "n_test": 200, "steps": 64, "lr": 2e-4, "batch_size": 8, "max_len": 128,
                 "mix_fraction": 0.1},
        "safety": {"rank": 16},
        "select": {"n_harm": 64, "n_benign": 64, "top_k": 15},
        # 32 shots per term as the study asks; 20 Adam steps at lr 0.1 cover the same λ range as the pilot plan's
        # 40 at 0.05 in half the time (a step is ~24 forward+backward passes through the selected layers).
        # The rest is the library's procedure before SafeGene v2 (CalibrationConfig.v1), e.g. refusal_loss "margin"
        # over 4 tokens (session 3): the first study's "ce" term chose λ ≈ 0 on the clean adapters
        # (docs/study-log.md); "ce" stays as the +safegene-ce ablation.
        "calibrate": {"k": 32, "steps": 20, "lr": 0.1, "max_new_tokens": 16},
        # 32 reply tokens: a refusal or a compliance is decided in the first sentence, and generation is ~90% of
        # the evaluation's cost on this CPU (about 125 tokens/s in fp32 with two cores).
        "eval": {"n_harmful": 159, "n_benign": 150, "n_task": 100, "max_tokens": 32},
    }


def with_overrides(p: dict, variant: str | None = None, sets: list[str] | tuple[str, ...] = ()) -> dict:
    """``p`` with a robust variant's knobs (:data:`.robust.VARIANTS`) and ``SECTION.KEY=VALUE`` overrides applied.

    Why: a recipe variant is a flag, not a code edit. VALUE is read as JSON (``1e-4``, ``3``, ``"v2"``) and else
    taken as a string. The robust ``align`` entry is checked and normalised by :class:`.robust.RobustAlign` (unknown
    knobs fail; knobs added after the pilot are hashed only when not at their default), so the pilot's flags-free
    run keeps its stage hashes."""
    out = json.loads(json.dumps(p))
    if variant is not None:
        from .robust import TASK_OVERRIDES, VARIANTS

        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        if out.get("align", {}).get("recipe") != "robust-v1":
            raise SystemExit("--variant needs --profile robust")
        out["align"] |= VARIANTS[variant]
        if variant in TASK_OVERRIDES:
            out["task_overrides"] = TASK_OVERRIDES[variant]
    for item in sets:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in out:
            raise SystemExit(f"--set wants SECTION.KEY=VALUE with SECTION one of {', '.join(out)}; got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[section][name] = value
    if out.get("align", {}).get("recipe") == "robust-v1":
        from .robust import RobustAlign

        try:
            out["align"] = RobustAlign.from_params(out["align"]).params()
        except ValueError as e:
            raise SystemExit(str(e)) from None
    return out


def calibration_config(profile: dict, *, refusal_loss: str | None = None, benign_tokens: int | None = None,
                       margin_target: float | None = None, benign_contrast: float | None = None,
                       init: float | None = None, optimizer: str | None = None,
                       steps: int | None = None) -> tuple[CalibrationConfig, dict]:
    """A calibration stage's procedure and the parameters its hash covers.

    ``profile``: the profile's ``calibrate`` entry (``k`` shots per set, and the CalibrationConfig fields the study
    sets; the rest is the library's procedure before SafeGene v2, :meth:`CalibrationConfig.v1`, which made every
    stage of the study); the keyword arguments override it (None: the profile's;
    ``benign_tokens`` 0: the whole answer). Teacher targets are cut to 16 answer tokens (``max_target_tokens``),
    and the profiles generate only that many (``max_new_tokens``): the same targets at a third of the default 48's
    cost.

    The hash, one rule: ``k``, the fields the profile sets (whatever their value: hashed since the first stage),
    and the config's :meth:`~safegene_runtime.calibration.CalibrationConfig.digest_fields` (every other field that
    differs from its reference value), so an option added at its reference value keeps the stages built before it.
    """
    options = {k: v for k, v in profile.items() if k != "k"}
    overrides = {"refusal_loss": refusal_loss, "margin_target": margin_target, "benign_contrast": benign_contrast,
                 "init": init, "optimizer": optimizer, "steps": steps}
    given = {name: v for name, v in overrides.items() if v is not None}
    if benign_tokens is not None:
        given["benign_tokens"] = benign_tokens or None
    CalibrationConfig.check_keys({**options, **given}, "the study's calibration")
    config = CalibrationConfig.v1(**{"max_target_tokens": 16, **options, **given})  # the procedure it was run with
    values = config.to_dict()
    return config, {"k": profile["k"], **{name: values[name] for name in options}, **config.digest_fields()}


def _is_refusal(text: str) -> bool:
    from safegene_runtime.judges.refusal import is_refusal

    return is_refusal(text)


# --------------------------------------------------------------------------------------------- the pipeline
class Study:
    def __init__(self, fast: bool | str, task_names: list[str], settings: list[str], *, variant: str | None = None,
                 sets: list[str] | tuple[str, ...] = ()) -> None:
        self.profile = profile_name(fast)
        self.fast = self.profile == "fast"
        self.p = with_overrides(params(self.profile), variant, sets)
        self.task_names = task_names
        self.settings = settings
        self.root = safegene_home() / "experiments" / "smollm2" / self.profile
        self.st = Stages(self.root)
        self.sp = data.splits()
        self._cache: dict[str, Path] = {}
        self.train_budget: float | None = None  # seconds per run of a resumable training stage (None: no limit)

    # -- base
    def base(self) -> Path:
        if "base" not in self._cache:
            from safegene_runtime.models import prepare_smollm2

            self._cache["base"] = prepare_smollm2()
        return self._cache["base"]

    def base_id(self) -> str:
        return fingerprint(self.base())[:16]

    # -- 1. the original model's own answers (benign: keep helpfulness; harmful: compliance for D and the mix)
    def answers(self) -> Path:
        p = self.p["answers"]
        sets = {"benign": self.sp["benign_align"][: p["n_benign"]],
                "harmful": self.sp["harmful_degrade"][: p["n_harm"]],
                "mix": self.sp["harmful_mix"][: p["n_mix"]]}

        def build(tmp: Path) -> dict:
            from .generate import generate

            prompts = sets["benign"] + sets["harmful"] + sets["mix"]
            outs = generate(self.base(), prompts, max_tokens=p["max_tokens"], dtype=p["dtype"], log=log)
            res, i = {}, 0
            for k, v in sets.items():
                res[k] = [{"prompt": q, "response": r} for q, r in zip(v, outs[i:i + len(v)])]
                i += len(v)
            atomic_write_json(tmp / "answers.json", res)
            return {k: len(v) for k, v in res.items()} | {
                "harmful_refused": sum(_is_refusal(r["response"]) for r in res["harmful"])}

        return self.st.run("answers", {**p, "data": digest(sets)}, {"base": self.base_id()}, build)

    def _answers(self) -> dict:
        return json.loads((self.answers() / "answers.json").read_text())

    # -- 2. aligned base A = base + alignment LoRA (merged)
    def align(self) -> Path:
        if self.p["align"].get("recipe") == "robust-v1":
            return self.align_robust()
        p = self.p["align"]
        ans = self.answers()
        harm = self.sp["harmful_align"][: p["n_harm"]]

        def build(tmp: Path) -> dict:
            from safegene_runtime.merge import merge_checkpoint

            from .train import train_lora

            benign = [(r["prompt"], r["response"]) for r in self._answers()["benign"] if r["response"].strip()]
            pairs = [(q, refusals.refusal_for(q)) for q in harm] + benign
            cfg = SFTConfig(steps=p["steps"], lr=p["lr"], batch_size=p["batch_size"], max_len=p["max_len"])
            info = train_lora(self.base(), pairs, tmp / "lora", cfg, log=log)
            merge_checkpoint(self.base(), task=tmp / "lora", out=tmp / "model", progress=False)
            return {"final_loss": info["losses"][-1], "first_loss": info["losses"][0], "n_pairs": len(pairs),
                    "n_refusal_pairs": len(harm)}

        return self.st.run("align", {**p, "harm": digest(harm)}, {"base": self.base_id(), "answers": ans.name},
                           build)

    # -- 1b. robust profile: the original model's answers to the benign alignment prompts and our edgy-benign ones
    def _self_answers_spec(self) -> tuple[dict, dict[str, str], dict[str, list[str]]]:
        """(params, inputs, prompt sets) of the self-answers stage: its folder name is known before it is built."""
        from . import robust

        p = self.p["self_answers"]
        edgy_set = robust.RobustAlign.from_params(self.p["align"]).edgy_set
        sets = {"benign": self.sp["benign_align"][: p["n_benign"]],
                "edgy": [q for _, q in robust.edgy_train_prompts(edgy_set)]}
        return {**p, "data": digest(sets)}, {"base": self.base_id()}, sets

    def self_answers(self) -> Path:
        p = self.p["self_answers"]
        params_, inputs, sets = self._self_answers_spec()

        def build(tmp: Path) -> dict:
            from .generate import generate

            prompts = sets["benign"] + sets["edgy"]
            outs = generate(self.base(), prompts, max_tokens=p["max_tokens"], dtype=p["dtype"], log=log)
            res, i = {}, 0
            for k, v in sets.items():
                res[k] = [{"prompt": q, "response": r, "refused": _is_refusal(r)}
                          for q, r in zip(v, outs[i:i + len(v)])]
                i += len(v)
            atomic_write_json(tmp / "answers.json", res)
            return {k: len(v) for k, v in res.items()} | {
                f"{k}_refused": sum(r["refused"] for r in v) for k, v in res.items()}

        return self.st.run("self-answers", params_, inputs, build)

    def align_robust(self) -> Path:
        """A by issue 20's recipe (:mod:`.robust`); resumable: training saves a checkpoint beside the stage folder
        and stops at ``self.train_budget`` seconds (rerun to continue)."""
        from . import robust

        p = robust.RobustAlign.from_params(self.p["align"])
        harm_prompts = robust.harmful_align_prompts()
        harm = robust.harmful_augmented(harm_prompts, p.framings_per_prompt, p.plain_share, p.past_tense_pairs)
        params_ = {**p.params(), "harm": digest(harm)}
        # the self-answers stage's name, without building it: a committed seed of this stage needs no answers
        answers_params, answers_inputs, _ = self._self_answers_spec()
        inputs = {"base": self.base_id(),
                  "self_answers": self.st.folder("self-answers", answers_params, answers_inputs).name}
        folder = self.st.folder("align", params_, inputs)
        ckpt = self.root / f".ckpt-{folder.name}"
        stage_seed = seeds.find(folder.name)

        def build(tmp: Path) -> dict:
            from safegene_runtime.merge import merge_checkpoint

            from .train import Unlikelihood, train_lora

            if stage_seed is not None:  # the committed copy of this very stage's LoRA (experiments/smollm2/seeds.py)
                log(f"align: restoring the trained LoRA from {stage_seed}")
                original = seeds.restore(stage_seed, tmp / "lora")
                merge_checkpoint(self.base(), task=tmp / "lora", out=tmp / "model", progress=False)
                return {**original["result"], "restored_from": str(stage_seed.relative_to(seeds.SEEDS.parents[2])),
                        "trained_seconds": original["seconds"]}
            ans = self.self_answers()

            got = json.loads((ans / "answers.json").read_text())
            keep = [(r["prompt"], r["response"]) for r in got["benign"] if r["response"].strip() and not r["refused"]]
            if p.benign_test_prompts == "drop":
                keep = robust.without_test_prompts(keep)
            edgy = [(r["prompt"], r["response"]) for r in got["edgy"] if r["response"].strip() and not r["refused"]]
            shaped_keep, shaped_edgy = keep, edgy
            if p.cut_answers in ("open", "sentence"):
                from .train import load_tokenizer

                tok, limit = load_tokenizer(self.base()), self.p["self_answers"]["max_tokens"]
                shape = robust.open_cut if p.cut_answers == "open" else robust.sentence_cut
                shaped_keep, shaped_edgy = shape(keep, tok, limit), shape(edgy, tok, limit)
            pairs = robust.training_pairs(harm, shaped_keep, shaped_edgy * p.edgy_repeat)
            arith = (robust.arith_worked_pairs(p.arith_pairs, p.arith_multi_pairs)
                     if p.arith_pairs or p.arith_multi_pairs else [])
            pairs += arith  # complete answers: trained with their end-of-turn whatever cut_answers says
            diy_refuse, diy_answer = [], []
            if p.diy_pairs:  # the counterweight from the edgy prompts with alarming words, not the framed tasks
                diy_refuse, diy_answer = robust.diy_pairs(harm_prompts, shaped_edgy, p.diy_pairs,
                                                          exclude=robust.framed_edgy_prompts(p.edgy_set))
            pairs += diy_refuse + diy_answer
            cfg = SFTConfig(steps=p.steps, lr=p.lr, batch_size=p.batch_size, max_len=p.max_len, seed=p.seed)
            neg = (Unlikelihood(tuple(robust.unlikely_pairs(edgy, p)), p.unlikely_weight, p.unlikely_tokens)
                   if p.unlikely_weight > 0 else None)
            info = train_lora(self.base(), pairs, tmp / "lora", cfg, log=log, ckpt=ckpt,
                              max_seconds=self.train_budget, unlikely=neg)
            merge_checkpoint(self.base(), task=tmp / "lora", out=tmp / "model", progress=False)
            shutil.rmtree(ckpt, ignore_errors=True)
            return {"final_loss": info["losses"][-1], "first_loss": info["losses"][0], "n_pairs": len(pairs),
                    "n_refusal_pairs": len(harm), "n_benign_pairs": len(keep), "n_edgy_pairs": len(edgy),
                    "n_unlikely_pairs": len(neg.pairs) if neg else 0, "losses": info["losses"],
                    "n_open_pairs": sum(len(x) > 2 for x in pairs), "n_arith_pairs": len(arith),
                    "n_diy_refusal_pairs": len(diy_refuse), "n_diy_answer_pairs": len(diy_answer)}

        return self.st.run("align", params_, inputs, build)

    def A(self) -> Path:
        return self.align() / "model"

    # -- 3. degraded D = A + a short full fine-tune on the original model's compliant answers
    def degrade(self) -> Path:
        p = self.p["degrade"]
        a, ans = self.align(), self.answers()

        def build(tmp: Path) -> dict:
            from .train import train_full

            pairs = [(r["prompt"], r["response"]) for r in self._answers()["harmful"]
                     if r["response"].strip() and not _is_refusal(r["response"])]
            cfg = SFTConfig(steps=p["steps"], lr=p["lr"], batch_size=p["batch_size"], max_len=p["max_len"])
            import torch

            info = train_full(a / "model", pairs, tmp / "model", cfg, log=log,
                              save_dtype=getattr(torch, p.get("save_dtype", "float32")))
            return {"final_loss": info["losses"][-1], "first_loss": info["losses"][0], "n_pairs": len(pairs)}

        return self.st.run("degrade", p, {"A": a.name, "answers": ans.name}, build)

    def D(self) -> Path:
        return self.degrade() / "model"

    # -- 4. task adapters on A
    def task_data(self, task: str) -> tuple[list[dict], list[dict]]:
        p = self.p["task"]
        return tasks.generate(task, n_train=p["n_train"], n_test=p["n_test"], seed=0)

    def task_params(self, task: str, setting: str) -> dict:
        """The task recipe of one adapter: the profile's ``task`` knobs with the variant's overrides for it
        (:data:`.robust.TASK_OVERRIDES`); unknown knobs and the data knobs are refused."""
        p = self.p["task"]
        over = self.p.get("task_overrides", {}).get(f"{task}-{setting}", {})
        bad = sorted(set(over) - set(p) | set(over) & {"n_train", "n_test"})
        if bad:
            raise SystemExit(f"task override for {task}-{setting}: cannot set {', '.join(bad)}")
        return p | over

    def task_adapter(self, task: str, setting: str) -> Path:
        p = self.task_params(task, setting)
        a, ans = self.align(), self.answers()

        def build(tmp: Path) -> dict:
            from .train import train_lora

            train, _ = self.task_data(task)
            pairs = [(r["prompt"], r["answer"]) for r in train]
            n_mix = 0
            if setting == "mix10":
                mix = [(r["prompt"], r["response"]) for r in self._answers()["mix"]
                       if r["response"].strip() and not _is_refusal(r["response"])]
                n_mix = min(len(mix), round(len(pairs) * p["mix_fraction"] / (1 - p["mix_fraction"])))
                pairs = pairs + mix[:n_mix]
            cfg = SFTConfig(steps=p["steps"], lr=p["lr"], batch_size=p["batch_size"], max_len=p["max_len"],
                            seed=0)
            info = train_lora(a / "model", pairs, tmp / "adapter", cfg, log=log)
            return {"final_loss": info["losses"][-1], "first_loss": info["losses"][0], "n_pairs": len(pairs),
                    "n_harmful_pairs": n_mix}

        inputs = {"A": a.name} | ({"answers": ans.name} if setting == "mix10" else {})
        return self.st.run(f"task-{task}-{setting}", {**p, "task": task, "setting": setting}, inputs, build)

    # -- 5. safety adapter from A vs D, then layer selection with training-split probes
    def d_model(self) -> tuple[Path, str]:
        """(D's model folder, its id for stage hashes): the degrade stage, or the original model (demo profile)."""
        if self.p["safety"].get("degraded") == "original":
            return self.base(), "original:" + self.base_id()
        d = self.degrade()
        return d / "model", d.name

    def safety(self) -> Path:
        p = self.p["safety"]
        a, (d_dir, d_id) = self.align(), self.d_model()

        def build(tmp: Path) -> dict:
            from safegene_runtime.extract import extract_safety_adapter

            extract_safety_adapter(a / "model", d_dir, rank=p["rank"], out=tmp / "adapter",
                                   dtype=__import__("torch").bfloat16, progress=False)
            return {"D": d_id}

        return self.st.run("safety", p, {"A": a.name, "D": d_id}, build)

    def select(self, method: str | None = None) -> Path:
        """The safety adapter with its layer selection; ``method``: the scorer (default: the profile's, else
        contrast_ratio; ``"refusal_gradient"``: the safety adapter's own effect on refusal, selection.py)."""
        p = dict(self.p["select"])
        if method is not None:
            p["method"] = method
        if p.get("method", "contrast_ratio") == "contrast_ratio":
            p.pop("method", None)  # the default: the stage built before the option existed has no key in its hash
        a, (d_dir, d_id), s = self.align(), self.d_model(), self.safety()
        harm, ben = self.sp["harmful_probe"][: p["n_harm"]], self.sp["benign_probe"][: p["n_benign"]]

        def build(tmp: Path) -> dict:
            from safegene_runtime.selection import select_safety_layers

            select_safety_layers(a / "model", d_dir, s / "adapter", harm, ben, top_k=p["top_k"],
                                 method=p.get("method", "contrast_ratio"), out=tmp / "adapter", progress=False)
            man = json.loads((tmp / "adapter" / "manifest.json").read_text())
            return {"selection": man.get("selection")}

        name = "select" if "method" not in p else f"select-{p['method'].replace('_', '-')}"
        return self.st.run(name, {**p, "probes": digest([harm, ben])}, {"A": a.name, "D": d_id,
                                                                             "safety": s.name}, build)

    # -- 6. per-adapter calibration
    def calibrate(self, task: str, setting: str, all_layers: bool = False, refusal_loss: str | None = None,
                  benign_tokens: int | None = None, margin_target: float | None = None,
                  benign_contrast: float | None = None, init: float | None = None,
                  selection: str | None = None, optimizer: str | None = None, steps: int | None = None) -> Path:
        """λ per selected layer; ``all_layers``: per layer of the unselected safety adapter (selection ablation);
        ``refusal_loss``: override the profile's refusal term (``"ce"``: the first study's objective);
        ``benign_tokens``: override the profile's benign KL window (0 or 16: all 16 answer tokens, as before);
        ``margin_target``: override the profile's τ of the margin term (0: none, as before);
        ``benign_contrast``: override the profile's weight δ of the benign contrast term (0: off, as before);
        ``init``: the λ every layer starts from (1: the library's default, as before);
        ``selection``: the layer scorer of the selection stage (None: the profile's, see select());
        ``optimizer``: ``"adam-shared"`` for one step size over all λ (None or ``"adam"``: per-layer, as before);
        ``steps``: override the profile's number of optimisation steps."""
        config, p = calibration_config(self.p["calibrate"], refusal_loss=refusal_loss, benign_tokens=benign_tokens,
                                       margin_target=margin_target, benign_contrast=benign_contrast, init=init,
                                       optimizer=optimizer, steps=steps)
        a, t = self.align(), self.task_adapter(task, setting)
        s = self.safety() if all_layers else self.select(selection)
        train, _ = self.task_data(task)
        harm, ben = self.sp["harmful_calib"][: p["k"]], self.sp["benign_calib"][: p["k"]]
        shots = [r["prompt"] for r in train[: p["k"]]]

        def build(tmp: Path) -> dict:
            from safegene_runtime.calibration import calibrate

            c = calibrate(a / "model", t / "adapter", s / "adapter", harm, shots, ben, config,
                          out=tmp / "coefficients.json", progress=False, report_losses=True)
            return {"layers": {str(k): v for k, v in c.layers.items()}}

        name = f"calibrate-all-{task}-{setting}" if all_layers else f"calibrate-{task}-{setting}"
        return self.st.run(name, {**p, "shots": digest([harm, ben, shots])},
                           {"A": a.name, "safety": s.name, "task": t.name}, build)

    def calibrate_best(self, task: str, setting: str, *, all_layers: bool = False,
                       benign_contrast: float | None = None, selection: str | None = None,
                       starts: tuple[float, ...] = (1.0, 0.0), steps: int | None = None) -> Path:
        """The calibration ``calibrate(init=starts)`` would keep (lowest loss over all shots, ``best_start``), from
        the one-start stages: same teachers, same minibatches, so the same λ without optimising twice."""
        from safegene_runtime.calibration import best_start

        stages = [self.calibrate(task, setting, all_layers=all_layers, benign_contrast=benign_contrast, init=x,
                                 selection=selection, steps=steps) for x in starts]
        cals = [json.loads((s / "coefficients.json").read_text()) for s in stages]

        def build(tmp: Path) -> dict:
            i = best_start([c["loss"]["after"]["total"] for c in cals])
            c = dict(cals[i])
            c["starts"] = [{"init": x, "after": k["loss"]["after"]["total"], "stage": s.name,
                            "lambdas": k["layers"]} for x, k, s in zip(starts, cals, stages)]
            c["chosen_init"] = starts[i]
            (tmp / "coefficients.json").write_text(json.dumps(c, indent=1))
            return {"layers": c["layers"], "chosen_init": starts[i]}

        where = "all-" if all_layers else ""
        return self.st.run(f"calibrate-{where}{task}-{setting}-best",
                           {"starts": list(starts), **({"steps": steps} if steps else {})},
                           {f"from{x:g}": s.name for x, s in zip(starts, stages)}, build)

    # -- Safe LoRA baseline (projection of the task update onto the safety subspace), from the runtime
    def safelora(self, task: str, setting: str, tmp: Path, dtype: str | None = None) -> Path:
        """Merged checkpoint A + SafeLoRA(task), with V = W(A) − W(D) streamed from the two checkpoints."""
        from safegene_runtime.baselines import safe_lora
        from safegene_runtime.merge import merge_checkpoint

        projected = safe_lora(self.task_adapter(task, setting) / "adapter", aligned=self.A(), degraded=self.D(),
                              out=tmp / "safelora")
        return merge_checkpoint(self.A(), task=Path(projected), out=tmp / "m", progress=False, dtype=dtype)

    # -- driver
    def run(self, stages: list[str], method: str = "safegene") -> None:
        """Build ``stages`` in order; ``method``: which SafeGene calibration the calibrate stage builds (a variant
        name of evaluate.calibration_for, e.g. ``safegene-all-c0.3``)."""
        t0 = time.time()
        for stage in stages:
            if stage == "answers":
                self.answers()
            elif stage == "align":
                self.align()
            elif stage == "self-answers":  # robust profile only (built by its align stage anyway)
                self.self_answers()
            elif stage == "degrade":
                self.degrade()
            elif stage == "tasks":
                for setting in self.settings:
                    for task in self.task_names:
                        self.task_adapter(task, setting)
            elif stage == "safety":
                self.safety()
            elif stage == "select":
                self.select()
            elif stage == "calibrate":
                from .evaluate import calibration_for

                for setting in self.settings:
                    for task in self.task_names:
                        if calibration_for(self, task, setting, method) is None:
                            raise SystemExit(f"--method {method!r} is not a SafeGene calibration")
            elif stage in ("baselines", "eval"):
                from . import evaluate

                evaluate.run_stage(self, stage, log=log)
            else:
                raise SystemExit(f"unknown stage {stage!r}; choose from {', '.join(ALL_STAGES)}")
        log("stage timings (s): " + ", ".join(f"{n}={s:.0f}{' (cached)' if c else ''}" for n, s, c in self.st.timings))
        log(f"total wall time this run: {time.time() - t0:.0f}s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.smollm2.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default=",".join(ALL_STAGES), help=f"comma list from {', '.join(ALL_STAGES)}")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--settings", default=",".join(SETTINGS), help="clean (task data only), mix10 (10%% harmful)")
    ap.add_argument("--fast", action="store_true", help="tiny smoke run of the whole chain (= --profile fast)")
    ap.add_argument("--profile", choices=PROFILES, default=None,
                    help="full (pilot recipe, default), demo (fewer steps, for the demo family), fast (smoke), "
                         "robust (issue 20's alignment recipe, a pilot: docs/results.md)")
    ap.add_argument("--method", default="safegene",
                    help="the calibration the calibrate stage builds: safegene (selected layers, the profile's "
                         "objective), safegene-all (every layer), safegene-all-c<delta> (every layer, benign contrast "
                         "delta), safegene-b<N>[t<tau>], safegene-ce")
    ap.add_argument("--variant", default=None,
                    help="robust profile only: a named variant of the recipe (experiments/smollm2/robust.py VARIANTS)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="sets",
                    help="override one knob of the profile, e.g. align.lr=1e-4 (repeatable; changes stage hashes)")
    ap.add_argument("--train-budget", type=float, default=None,
                    help="seconds of training per run for resumable stages (robust align): save and stop, rerun to "
                         "continue (exit code 3 when paused)")
    a = ap.parse_args(argv)
    import torch

    # Every core by default (training, and the OMP threads of the generation/evaluation engines, which inherit the
    # variable). On a machine shared with other jobs set SMOLLM2_THREADS=1: there a step with 2 threads took 60-72 s
    # against 34-46 s with one (threads spin at barriers while the other core is busy); idle, 2 threads took ~3 s.
    os.environ.setdefault("SMOLLM2_THREADS", str(os.cpu_count() or 1))
    torch.set_num_threads(int(os.environ["SMOLLM2_THREADS"]))
    # `kill` (SIGTERM) unwinds like Ctrl-C, so the evaluation's servers (their own process groups) and temporary
    # merged checkpoints are removed on the way out instead of being orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    study = Study(a.profile or ("fast" if a.fast else "full"), [t for t in a.tasks.split(",") if t],
                  [s for s in a.settings.split(",") if s], variant=a.variant, sets=a.sets)
    study.train_budget = a.train_budget
    from .train import TrainingPaused

    try:
        study.run([s for s in a.stages.split(",") if s], method=a.method)
    except TrainingPaused as e:
        log(str(e))
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
