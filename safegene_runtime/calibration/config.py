"""``CalibrationConfig``: every knob of the calibration procedure, its default, its check and its help, in one place.

PEFT-style: a frozen dataclass whose field defaults *are* the default procedure (nothing else restates them:
``safegene calibrate`` derives its flags from the fields, the server's ``calibrate:`` block accepts any field, the
SmolLM2 study builds its stage configs from it). Each field's ``metadata["help"]`` is its help text.

Why a module of its own, without torch: the CLI builds its flags and the server parses its config at start-up from
these fields, and ``safegene --help`` must not load torch (``safegene_runtime/cli/__init__.py``).

The digest (:meth:`CalibrationConfig.digest`) is the cache key of coefficients made with a config (the server's
load-time cache, the study's stage hashes). Its rule, chosen so that adding a knob never changes an existing key:

1. a field enters the digest only when its value differs from the field's *reference* value, the value that
   reproduces what the procedure did before the field existed (``metadata["reference"]``; the field's default
   unless stated): so a default-valued new knob leaves every earlier key as it was. A field whose default moved
   after keys were made keeps its old value as reference: ``refusal_loss`` (the first procedure was ``"ce"``),
   ``margin_tokens`` (16, the whole answer window), and the fields SafeGene v2 (issue 22) changed: ``steps``,
   ``lr``, ``max_new_tokens``, ``layers``, ``benign_contrast``, ``onpolicy_every``, ``benign_source``,
   ``benign_edgy_shots``;
2. a field the procedure does not read under this config is left out (:meth:`CalibrationConfig.unused_fields`:
   the margin's window and target under ``refusal_loss="ce"``, the benign window when the benign KL is off);
3. equivalent spellings hash alike: ``benign_tokens`` at or past ``max_target_tokens`` is the whole answer (None).

The reference values never change (a changed reference would change every key); the defaults may (a new default
procedure then gets new keys, because its fields differ from the references where they differ from the old one).
The SmolLM2 study hashes these fields plus the knobs its profiles set, whatever their value (they were in its
hashes from its first stage): ``experiments/smollm2/run.py``'s ``calibration_config``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from ..digests import json_digest

#: the refusal terms of the objective (``procedure``'s docstring)
REFUSAL_LOSSES = ("margin", "ce")
#: the λ optimisers (``optim``)
OPTIMIZERS = ("adam", "adam-shared")
#: where the benign shots come from (``procedure``; ``edgy``: :mod:`safegene_runtime.edgy_train`'s pool)
BENIGN_SOURCES = ("given", "edgy", "given+edgy")
#: one λ per layer, or one per layer and module group (:func:`safegene_runtime.adapters.module_group`)
GRANULARITIES = ("layer", "attn-mlp")


#: what SafeGene v2 (issue 22) changed in the default procedure: the fields' values before it (their references)
V1_PROCEDURE: dict[str, Any] = dict(steps=40, lr=0.05, max_new_tokens=48, layers=None, benign_contrast=0.0,
                                    onpolicy_every=0, benign_source="given", benign_edgy_shots=32)


class CalibrationConfigError(ValueError):
    """A bad calibration option; ``field`` names it (the server's config errors and the CLI point at it)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.field = name


def _knob(default: Any, help: str, **extra: Any) -> Any:
    """A field with its help text (and, in ``extra``: ``reference``, ``choices``, ``none_means``, ``metavar``)."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class CalibrationConfig:
    """The calibration procedure's knobs (``safegene_runtime.calibration.procedure`` describes the objective).

    The defaults are the default procedure. Build one with keywords, :meth:`from_dict` (unknown keys refused) or
    :meth:`replace`; a bad value raises :class:`CalibrationConfigError` naming the field. :meth:`to_dict` is
    JSON-able and round-trips through :meth:`from_dict`; :meth:`digest` is the cache key (rule: module docstring).
    """

    seed: int = _knob(0, "seed of torch and of the minibatch order")
    steps: int = _knob(20, "optimisation steps per start (0: keep the start); with stop_tol, the most it takes",
                       reference=40)
    lr: float = _knob(0.1, "step size of the lambda optimiser", reference=0.05)
    beta: float = _knob(1.0, "weight of the task KL term (keep the task adapter's own answers to task shots)")
    gamma: float = _knob(1.0, "weight of the benign KL term (keep the base's own answers to benign shots)")
    lambda_max: float = _knob(4.0, "every lambda is clamped to [0, lambda_max]")
    penalty: float = _knob(1e-3, "weight of sum(lambda^2)")
    init: float | tuple[float, ...] = _knob(
        1.0, "the lambda every layer starts from; several (e.g. 1,0): calibrate from each and keep the lowest loss "
             "over all shots (each start costs the optimisation again, not the teachers)",
        metavar="LAMBDA[,LAMBDA...]")
    max_new_tokens: int = _knob(16, "length of the teachers' greedy answers (capped at max_target_tokens)",
                                reference=48)
    max_prompt_tokens: int = _knob(128, "keep the last N tokens of each prompt")
    max_target_tokens: int | None = _knob(16, "train on the first N answer tokens", none_means="all of them")
    batch_size: int = _knob(8, "shots per term per step")
    gen_batch_size: int = _knob(32, "prompts per batch when generating the teachers' answers")
    layers: tuple[int, ...] | str | None = _knob(
        "all", "layers to calibrate: 'all', 'selection' (the safety adapter's layer selection) or comma-separated "
               "indices (on SmolLM2 all layers did better than the selection, docs/study-log.md)",
        none_means="the safety adapter's selection", metavar="all|selection|L[,L...]", reference=None)
    refusal_loss: str = _knob(
        "margin", "refusal term: margin (prefer the base's refusal over the task model's answer, on the harmful shots "
                  "the task model complies with) or ce (cross-entropy of the base's refusal wording)",
        choices=REFUSAL_LOSSES, reference="ce")
    margin_tokens: int = _knob(4, "answer tokens the margins compare: the opening, where refusing is decided",
                               reference=16)
    margin_target: float = _knob(0.0, "push the refusal margin past TAU nats per token: softplus(TAU - margin)",
                                 metavar="TAU")
    benign_tokens: int | None = _knob(
        None, "benign KL over the first N tokens of the base's answers, where an over-refusing model stops or refuses",
        none_means="all max_target_tokens")
    benign_contrast: float = _knob(
        0.3, "weight of the benign contrast term: prefer the base's answer to a refusal or an empty reply on the "
             "benign shots the base answers (0: off)", metavar="DELTA", reference=0.0)
    optimizer: str = _knob(
        "adam", "adam: a step size per layer; adam-shared: one for all layers, so layers the loss barely depends on "
                "barely move", choices=OPTIMIZERS)
    # -- added for issue 22 item 2 (their references reproduce the procedure before they existed)
    onpolicy_every: int = _knob(
        5, "on-policy refusal term: every N steps regenerate the current model's greedy answers to the harmful shots "
           "and push each one the keyword judge does not call a refusal (fragments, deflections, empty replies) "
           "below the base's refusal, over the first margin_tokens tokens (0: off)", metavar="N", reference=0)
    onpolicy_tokens: int = _knob(24, "length of the regenerated answers the on-policy term's keyword judge reads",
                                 metavar="N")
    onpolicy_weight: float = _knob(1.0, "weight of the on-policy refusal term", metavar="W")
    benign_source: str = _knob(
        "given+edgy", "benign shots: given (the benign shots passed in), edgy (benign_edgy_shots prompts drawn by "
                      "seed from the shipped edgy-benign training pool: harmless requests with alarming words or in "
                      "harmful framings, none equal or near any validation or test prompt) or given+edgy (both)",
        choices=BENIGN_SOURCES, reference="given")
    benign_edgy_shots: int = _knob(16, "how many edgy-benign prompts benign_source edgy / given+edgy draws",
                                   metavar="N", reference=32)
    granularity: str = _knob(
        "layer", "layer: one lambda per layer; attn-mlp: one for the attention and one for the MLP modules of each "
                 "layer, pulled towards their mean by group_shrinkage", choices=GRANULARITIES)
    group_shrinkage: float = _knob(
        0.1, "attn-mlp: weight of sum over layers and groups of (lambda - the layer's mean lambda)^2", metavar="RHO")
    stop_tol: float = _knob(
        0.0, "stop a start early once the mean loss of the last stop_patience steps is less than TOL (relative) below "
             "the mean of the stop_patience steps before (steps stays the cap; 0: always run all steps)",
        metavar="TOL")
    stop_patience: int = _knob(10, "window of the stopping rule, in steps", metavar="N")
    harmful_framed: int = _knob(
        0, "add N harmful shots: the given ones asked again in the framings the aligned base was trained to refuse "
           "(past tense, role-play, fiction, ...: safegene_runtime/rephrase.py FRAMINGS, dealt round robin), so the "
           "refusal terms see the request asked other ways, not only its plain wording (0: off)", metavar="N")
    benign_onpolicy_weight: float = _knob(
        0.0, "on-policy benign term (needs onpolicy_every): at each regeneration also regenerate the current model's "
             "greedy answers to the benign shots the base answers and push each one the keyword judge calls a refusal "
             "(or an empty reply) below the base's answer, over the first margin_tokens tokens, with this weight: a "
             "penalty on the benign shots the model stops answering as lambda grows (0: off)", metavar="W")
    shrink_step: float = _knob(
        0.0, "after the steps, scale every lambda by STEP, 2*STEP, ... (< 1) and keep the first scale at which the "
             "model still refuses every harmful shot it refuses at the calibrated lambda (0: off; "
             "safegene_runtime/calibration/shrink.py)", metavar="STEP")
    shrink_tolerance: int = _knob(
        0, "with shrink_step (unused without it): a scale is kept when at most N harmful shots refused at the "
           "calibrated lambda are answered at it (0: every one stays refused), so one shot does not decide alone",
        metavar="N")

    def __post_init__(self) -> None:
        ints = ("seed", "steps", "max_new_tokens", "max_prompt_tokens", "batch_size", "gen_batch_size",
                "margin_tokens", "onpolicy_every", "onpolicy_tokens", "benign_edgy_shots", "stop_patience",
                "harmful_framed", "shrink_tolerance")
        for name in ints + ("max_target_tokens", "benign_tokens"):
            v = getattr(self, name)
            if v is None and name not in ints:
                continue
            if isinstance(v, bool) or not isinstance(v, int):
                raise CalibrationConfigError(name, f"{name} must be an integer (got {v!r})")
            if name in ("steps", "onpolicy_every", "harmful_framed", "shrink_tolerance") and v < 0:
                raise CalibrationConfigError(name, f"{name} must be 0 or more (got {v})")
            if name not in ("seed", "steps", "onpolicy_every", "harmful_framed", "shrink_tolerance") and v < 1:
                raise CalibrationConfigError(name, f"{name} must be positive (got {v})")
        for name in ("lr", "beta", "gamma", "lambda_max", "penalty", "margin_target", "benign_contrast",
                     "onpolicy_weight", "group_shrinkage", "stop_tol", "shrink_step", "benign_onpolicy_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise CalibrationConfigError(name, f"{name} must be a finite number (got {v!r})")
            object.__setattr__(self, name, float(v))
            if name == "lambda_max" and not v > 0:
                raise CalibrationConfigError(name, f"lambda_max must be a positive number (got {v})")
            if name in ("lr", "beta", "gamma", "penalty", "benign_contrast", "onpolicy_weight", "group_shrinkage",
                        "stop_tol", "benign_onpolicy_weight") and v < 0:
                raise CalibrationConfigError(name, f"{name} must be non-negative (got {v})")
            if name == "shrink_step" and not 0 <= v < 1:
                raise CalibrationConfigError(name, f"shrink_step must be in [0, 1) (got {v})")
        if self.benign_onpolicy_weight and not self.onpolicy_every:
            raise CalibrationConfigError("benign_onpolicy_weight", "benign_onpolicy_weight regenerates answers on the "
                                         "on-policy schedule: set onpolicy_every > 0 with it")
        for name, allowed in (("refusal_loss", REFUSAL_LOSSES), ("optimizer", OPTIMIZERS),
                              ("benign_source", BENIGN_SOURCES), ("granularity", GRANULARITIES)):
            if getattr(self, name) not in allowed:
                raise CalibrationConfigError(name, f"{name} must be one of {', '.join(allowed)} "
                                                   f"(got {getattr(self, name)!r})")
        object.__setattr__(self, "init", self._starts(self.init, self.lambda_max))
        object.__setattr__(self, "layers", self._layers(self.layers))

    @staticmethod
    def _starts(init: Any, lambda_max: float) -> float | tuple[float, ...]:
        """One start as a float, several as a tuple (one listed start is that start)."""
        bad = CalibrationConfigError("init", f"init must be one or more starting λ in [0, lambda_max={lambda_max:g}] "
                                             f"(got {init!r})")
        many = isinstance(init, (list, tuple))
        xs = list(init) if many else [init]
        if not xs or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in xs):
            raise bad
        starts = tuple(float(x) for x in xs)
        if not all(0.0 <= x <= lambda_max for x in starts):
            raise bad
        return starts if len(starts) > 1 else starts[0]

    @staticmethod
    def _layers(layers: Any) -> tuple[int, ...] | str | None:
        """None (the safety adapter's selection; also spelled "selection"), "all", or the sorted distinct indices."""
        if layers is None or layers == "all":
            return layers
        if layers == "selection":
            return None
        bad = CalibrationConfigError("layers", "layers must be a non-empty list of layer indices, 'all' or "
                                               f"'selection' (got {layers!r})")
        if isinstance(layers, str) or not isinstance(layers, (list, tuple)) or not layers:
            raise bad
        if any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in layers):
            raise bad
        return tuple(sorted(set(layers)))

    # ---------------------------------------------------------------------------------------------- construction
    @classmethod
    def v1(cls, **changes: Any) -> "CalibrationConfig":
        """The default procedure before SafeGene v2 (issue 22), with ``changes``: the SmolLM2 study's calibration
        stages, their hashes and the results recorded from them were made with it, so the study builds from it."""
        return cls(**{**V1_PROCEDURE, **changes})

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def check_keys(cls, keys: Any, where: str = "calibration config") -> None:
        """Refuse names that are not fields (the error names them and lists the fields)."""
        unknown = sorted(set(keys) - set(cls.field_names()))
        if unknown:
            raise CalibrationConfigError(unknown[0], f"{where}: unknown option(s) {', '.join(map(str, unknown))} "
                                                     f"(options: {', '.join(cls.field_names())})")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CalibrationConfig":
        """A config from (a subset of) its fields; the rest keep their defaults; unknown keys are refused."""
        if not isinstance(d, Mapping):
            raise CalibrationConfigError("", f"a calibration config is a mapping of options (got {d!r})")
        cls.check_keys(d)
        return cls(**d)

    def replace(self, **changes: Any) -> "CalibrationConfig":
        """A copy with ``changes`` applied (checked like a new config; unknown names refused)."""
        self.check_keys(changes)
        return CalibrationConfig(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-able (tuples as lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    # ---------------------------------------------------------------------------------------------- teachers
    @property
    def teacher_tokens(self) -> int:
        """How many tokens a teacher's greedy answer is generated to: only the first ``max_target_tokens`` are
        trained on, so generating more is wasted work."""
        return min(self.max_new_tokens, self.max_target_tokens) if self.max_target_tokens else self.max_new_tokens

    def target(self, answer: list[int]) -> list[int]:
        """The part of a teacher's answer the objective trains on (its first ``max_target_tokens`` tokens)."""
        return answer[: self.max_target_tokens] if self.max_target_tokens else answer

    # ---------------------------------------------------------------------------------------------- identity
    def unused_fields(self) -> set[str]:
        """Fields the procedure does not read under this config (left out of the digest)."""
        unused = set()
        if self.refusal_loss != "margin" and self.onpolicy_every == 0:  # the on-policy term is a margin too
            unused.add("margin_target")
            if self.benign_contrast == 0:  # the benign contrast also compares margin_tokens opening tokens
                unused.add("margin_tokens")
        if self.gamma == 0:
            unused.add("benign_tokens")
        if self.onpolicy_every == 0:
            unused |= {"onpolicy_tokens", "onpolicy_weight"}
        if self.benign_source == "given":
            unused.add("benign_edgy_shots")
        if self.granularity == "layer":
            unused.add("group_shrinkage")
        if self.stop_tol == 0:
            unused.add("stop_patience")
        if self.shrink_step == 0:
            unused.add("shrink_tolerance")
        return unused

    def digest_fields(self) -> dict[str, Any]:
        """What the digest covers (the rule: module docstring); the SmolLM2 study puts these in its stage hashes."""
        d = self.to_dict()
        if (self.benign_tokens is not None and self.max_target_tokens is not None
                and self.benign_tokens >= self.max_target_tokens):
            d["benign_tokens"] = None  # the whole (max_target_tokens) answer, as None
        ref = {f.name: f.metadata.get("reference", f.default) for f in fields(self)}
        unused = self.unused_fields()
        return {k: v for k, v in d.items() if k not in unused and v != ref[k]}

    def digest(self) -> str:
        """sha256 (hex) of :meth:`digest_fields` as canonical JSON: the cache key of coefficients made with it."""
        return json_digest(self.digest_fields())

    def describe(self) -> str:
        """The procedure in one sentence (``safegene calibrate --help`` prints the default's)."""
        starts = [self.init] if isinstance(self.init, float) else list(self.init)
        opt = "Adam" if self.optimizer == "adam" else "shared-step Adam"
        if self.layers is None:
            where = "the safety adapter's selected layers"
        elif self.layers == "all":
            where = "every layer of the safety adapter"
        else:
            where = "layers " + ",".join(map(str, self.layers))
        refusal = (f"refusal margin over the first {self.margin_tokens} answer tokens"
                   + (f" pushed past {self.margin_target:g}" if self.margin_target else "")
                   if self.refusal_loss == "margin" else "cross-entropy of the base's refusals")
        budget = (f"{self.steps} {opt} steps" if not self.stop_tol else
                  f"up to {self.steps} {opt} steps (stopping once the loss improves by less than {self.stop_tol:g} "
                  f"over {self.stop_patience} steps)")
        per = "lambda" if self.granularity == "layer" else \
            f"lambda per attention / MLP group (shrinkage {self.group_shrinkage:g} to the layer's mean)"
        return (f"{budget} at lr {self.lr:g} from {per} = {' and from '.join(f'{x:g}' for x in starts)}"
                f" on {where}; {refusal}"
                + (f", on-policy refusal margin x {self.onpolicy_weight:g} (answers regenerated every "
                   f"{self.onpolicy_every} steps, {self.onpolicy_tokens} tokens)" if self.onpolicy_every else "")
                + (f"; the harmful shots plus {self.harmful_framed} of them asked in the base's trained framings"
                   if self.harmful_framed else "")
                + f", task KL x {self.beta:g}, benign KL x {self.gamma:g}"
                + (f" over {self.benign_tokens} tokens" if self.benign_tokens else "")
                + (f", benign contrast x {self.benign_contrast:g}" if self.benign_contrast else ", no benign contrast")
                + (f", on-policy benign margin x {self.benign_onpolicy_weight:g} (the benign shots the model refuses "
                   "as lambda moves)" if self.benign_onpolicy_weight else "")
                + ({"given": "", "edgy": f", benign shots: {self.benign_edgy_shots} edgy-benign training prompts",
                    "given+edgy": f", benign shots: the given ones and {self.benign_edgy_shots} edgy-benign training "
                                  "prompts"}[self.benign_source])
                + f", penalty {self.penalty:g}, lambda in [0, {self.lambda_max:g}]"
                + (f"; then lambda shrunk to the smallest multiple of {self.shrink_step:g} at which every harmful shot "
                   "refused is still refused" + (f" but at most {self.shrink_tolerance}" if self.shrink_tolerance
                                                  else "") if self.shrink_step else ""))


__all__ = ["CalibrationConfig", "CalibrationConfigError", "V1_PROCEDURE", "REFUSAL_LOSSES", "OPTIMIZERS",
           "BENIGN_SOURCES", "GRANULARITIES"]
