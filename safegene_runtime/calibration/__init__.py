"""Stage 3: few-shot layer-wise coefficient calibration (the objective: :mod:`.procedure`'s docstring).

* :mod:`.config` — :class:`CalibrationConfig`: every knob, its default (the default procedure), check and help;
  no torch, so the CLI's flags and the server's config read it at start-up;
* :mod:`.teachers` — the shot record, greedy teacher answers, the keyword judge on them;
* :mod:`.objective` — the loss terms over a minibatch, the seeded minibatches;
* :mod:`.optim` — the λ optimisers and the rule that picks among several starts;
* :mod:`.procedure` — :func:`calibrate` itself, shot files and shot-set provenance.

The torch-backed names (:func:`calibrate` and the rest of ``_TORCH_EXPORTS``) load on first use (PEP 562), so
``from safegene_runtime.calibration import CalibrationConfig`` does not import torch. (The module holding
:func:`calibrate` is not named ``calibrate``: importing it would set the package attribute ``calibrate`` to the
module, shadowing the function.)
"""

from __future__ import annotations

from typing import Any

from .config import OPTIMIZERS, REFUSAL_LOSSES, CalibrationConfig, CalibrationConfigError

_TORCH_EXPORTS = ("calibrate", "load_shots", "shot_set_info", "SharedAdam", "best_start", "TERMS")


def __getattr__(name: str) -> Any:
    """The torch-backed part of the API, imported when first asked for."""
    if name not in _TORCH_EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # lazy: these import torch; CalibrationConfig (the CLI's flags, the server's config) must load without it
    from .objective import TERMS
    from .optim import SharedAdam, best_start
    from .procedure import calibrate, load_shots, shot_set_info

    found = {"calibrate": calibrate, "load_shots": load_shots, "shot_set_info": shot_set_info,
             "SharedAdam": SharedAdam, "best_start": best_start, "TERMS": TERMS}
    globals().update(found)
    return found[name]


__all__ = ["CalibrationConfig", "CalibrationConfigError", "REFUSAL_LOSSES", "OPTIMIZERS", *_TORCH_EXPORTS]
