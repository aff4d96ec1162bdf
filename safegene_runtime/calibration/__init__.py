"""Stage 3: few-shot layer-wise coefficient calibration (the objective: :mod:`.calibrate`'s docstring).

* :mod:`.teachers` — the shot record, greedy teacher answers, the keyword judge on them;
* :mod:`.objective` — the loss terms over a minibatch, the seeded minibatches, the default objective;
* :mod:`.optim` — the λ optimisers and the rule that picks among several starts;
* :mod:`.calibrate` — :func:`calibrate` itself, shot files and shot-set provenance.
"""

from .calibrate import calibrate, load_shots, shot_set_info
from .objective import (DEFAULT_BENIGN_CONTRAST, DEFAULT_BENIGN_TOKENS, DEFAULT_MARGIN_TARGET, DEFAULT_MARGIN_TOKENS,
                        DEFAULT_REFUSAL_LOSS, REFUSAL_LOSSES, TERMS)
from .optim import DEFAULT_OPTIMIZER, OPTIMIZERS, SharedAdam, best_start

__all__ = ["calibrate", "load_shots", "shot_set_info", "SharedAdam", "best_start", "TERMS", "REFUSAL_LOSSES",
           "OPTIMIZERS", "DEFAULT_REFUSAL_LOSS", "DEFAULT_MARGIN_TOKENS", "DEFAULT_MARGIN_TARGET",
           "DEFAULT_BENIGN_TOKENS", "DEFAULT_BENIGN_CONTRAST", "DEFAULT_OPTIMIZER"]
