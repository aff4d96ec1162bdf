"""Baselines that take the same adapters in and give the same PEFT adapter format out as SafeGene.

* :mod:`.uniform` — uniform safety arithmetic: ``task + λ·ΔS`` with one global λ on every layer.
* :mod:`.resta` — RESTA-style task arithmetic with DARE: ``task + λ·DARE_p(ΔS)`` (``p = 0`` is uniform).
* :mod:`.safe_lora` — Safe LoRA (Hsu et al., NeurIPS 2024): project low-similarity task updates onto the safety
  subspace; also the projection/similarity helpers SafeMERGE uses.
* :mod:`.safemerge` — SafeMERGE (Djuhera et al., 2025): merge the safety LoRA into the low-similarity modules only.
* :mod:`.tune` — choose each baseline's knobs per adapter on validation sets, with a written rule.

Each writes a content-addressed folder (scale-one config via ``save_adapter``, manifest with lineage and
``manifest["baseline"]`` describing the method and its per-module decisions), loadable by PEFT and vLLM.
"""

from .resta import resta_dare
from .safe_lora import safe_lora
from .safemerge import safemerge
from .uniform import uniform_safety

__all__ = ["resta_dare", "safe_lora", "safemerge", "uniform_safety"]
