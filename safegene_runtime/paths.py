"""Where SafeGene keeps prepared models and built artifacts on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def safegene_home() -> Path:
    """Root cache directory: ``$SAFEGENE_HOME`` or ``~/.cache/safegene``; created on first use."""
    home = Path(os.environ.get("SAFEGENE_HOME") or Path.home() / ".cache" / "safegene").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def models_dir() -> Path:
    """Prepared (converted) base models, one folder per model."""
    d = safegene_home() / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def artifacts_dir() -> Path:
    """Content-addressed store of built adapters, coefficients and merged checkpoints."""
    d = safegene_home() / "artifacts"
    d.mkdir(parents=True, exist_ok=True)
    return d
