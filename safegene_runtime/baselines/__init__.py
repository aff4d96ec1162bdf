"""Baselines that take the same adapters in and give the same PEFT adapter format out as SafeGene.

* :mod:`.uniform` — uniform safety arithmetic (RESTA-style): ``task + λ·ΔS`` with one global λ on every layer.
* :mod:`.safe_lora` — Safe LoRA (Hsu et al., NeurIPS 2024): project low-similarity task updates onto the safety
  subspace.

Each writes a content-addressed folder (scale-one config via ``save_adapter``, manifest with lineage and
``manifest["baseline"]`` describing the method and its per-module decisions), loadable by PEFT and vLLM.
"""

from .safe_lora import safe_lora
from .uniform import uniform_safety

__all__ = ["safe_lora", "uniform_safety"]
