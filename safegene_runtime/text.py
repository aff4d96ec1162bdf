"""Text normalisation: what "the same prompt" and "the same answer" mean everywhere in the runtime.

One definition, used by :mod:`.datasets` (de-duplication, the train/eval overlap check, the order-independent
prompt digest) and by :mod:`.scorers` (exact-match and label scoring), and by the SmolLM2 study's splits.
"""

from __future__ import annotations

import re
import unicodedata

_PUNCT_WS = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    """Casefold, unify Unicode forms, and turn every run of punctuation/whitespace into one space.

    Two prompts that differ only in case, punctuation or spacing are the same prompt for de-duplication and for the
    train/eval overlap check.
    """
    t = unicodedata.normalize("NFKC", text or "").casefold()
    return _PUNCT_WS.sub(" ", t).strip()


__all__ = ["normalise"]
