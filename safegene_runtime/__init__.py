"""SafeGene runtime: the method (extract, select, calibrate, stack, merge), baselines, judges, datasets and evaluation.

Importable without vLLM: everything here runs on torch, safetensors and transformers alone. The serving layer
lives in the sibling package ``server``.
"""

__version__ = "0.1.0"
