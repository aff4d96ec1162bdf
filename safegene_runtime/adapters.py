"""PEFT LoRA adapter folders: read, validate, write.

A LoRA folder is ``adapter_config.json`` + one ``adapter_model.safetensors`` whose keys look like
``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight``. Here a *module name* is the base model's module
path without the ``.weight`` suffix, e.g. ``model.layers.3.self_attn.q_proj``, so that
``f"{module}.weight"`` is the base checkpoint's tensor name.

Each module's delta is ``ΔW = scale · B @ A`` with ``A: [r, in]``, ``B: [out, r]`` and
``scale = alpha / r`` (or ``alpha / sqrt(r)`` with rsLoRA), where ``r`` and ``alpha`` come from ``rank_pattern`` /
``alpha_pattern`` when a pattern matches the module (PEFT's matching rule: a regex matched against a suffix of the
module name at a ``.`` boundary, first match wins) and from ``r`` / ``lora_alpha`` otherwise.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .artifacts import ArtifactError, read_manifest

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
_KEY_RE = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.default)?\.weight$")
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")

#: Linear modules of Llama / Qwen2 / Mistral / Gemma decoder layers (the same names in all four families).
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class AdapterError(ArtifactError):
    """An adapter folder is missing, malformed, or incompatible; the message names the file and the problem."""


def layer_index(module: str) -> int | None:
    """Decoder layer index of a module name (``model.layers.7.mlp.up_proj`` → 7), or None outside the layers."""
    m = _LAYER_RE.search(module)
    return int(m.group(1)) if m else None


#: the module groups a layer's λ can be split into (``CalibrationConfig(granularity="attn-mlp")``)
MODULE_GROUPS = ("attn", "mlp")
_ATTN_PARTS = ("self_attn", "attn", "attention", "self_attention")
_MLP_PARTS = ("mlp", "feed_forward", "ffn")


def module_group(module: str) -> str | None:
    """``"attn"`` or ``"mlp"`` from a module name's path (``model.layers.7.self_attn.q_proj`` → attn,
    ``model.layers.7.mlp.up_proj`` → mlp), or None when its path names neither."""
    parts = module.split(".")
    if any(p in _ATTN_PARTS for p in parts):
        return "attn"
    if any(p in _MLP_PARTS for p in parts):
        return "mlp"
    return None


def module_kind(module: str) -> str:
    """Last path component: ``q_proj``, ``down_proj``, ..."""
    return module.rsplit(".", 1)[-1]


def parse_lora_key(key: str) -> tuple[str, str]:
    """``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` → (``model.layers.0.self_attn.q_proj``, "A")."""
    m = _KEY_RE.match(key)
    if not m:
        raise AdapterError(f"unexpected tensor key {key!r}: only <module>.lora_A.weight / lora_B.weight are supported")
    return m.group("module"), m.group("which")


def lora_key(module: str, which: str) -> str:
    return f"{PEFT_PREFIX}{module}.lora_{which}.weight"


def _pattern_match(patterns: dict[str, Any], module: str) -> Any | None:
    for pat, value in patterns.items():
        if re.match(rf"(.*\.)?({pat})$", module):
            return value
    return None


@dataclass
class LoraConfig:
    """The parts of ``adapter_config.json`` that decide the math; ``raw`` keeps everything else verbatim."""

    r: int
    lora_alpha: float
    target_modules: list[str] | str | None = None
    use_rslora: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    base_model_name_or_path: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = CONFIG_FILE) -> "LoraConfig":
        if d.get("peft_type", "LORA") != "LORA":
            raise AdapterError(f"{source}: peft_type {d.get('peft_type')!r} is not LORA")
        for k in ("r", "lora_alpha"):
            if k not in d:
                raise AdapterError(f"{source}: missing required field {k!r}")
        if d.get("use_dora"):
            raise AdapterError(f"{source}: DoRA adapters are not supported")
        if d.get("bias", "none") != "none":
            raise AdapterError(f"{source}: adapter bias {d.get('bias')!r} is not supported (must be 'none')")
        return cls(
            r=int(d["r"]),
            lora_alpha=float(d["lora_alpha"]),
            target_modules=d.get("target_modules"),
            use_rslora=bool(d.get("use_rslora", False)),
            rank_pattern=dict(d.get("rank_pattern") or {}),
            alpha_pattern=dict(d.get("alpha_pattern") or {}),
            base_model_name_or_path=d.get("base_model_name_or_path"),
            raw=dict(d),
        )

    def rank_of(self, module: str) -> int:
        v = _pattern_match(self.rank_pattern, module)
        return int(v) if v is not None else self.r

    def alpha_of(self, module: str) -> float:
        v = _pattern_match(self.alpha_pattern, module)
        return float(v) if v is not None else self.lora_alpha

    def scaling(self, module: str) -> float:
        """PEFT's scale for the module: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        r, a = self.rank_of(module), self.alpha_of(module)
        return a / math.sqrt(r) if self.use_rslora else a / r


@dataclass
class LoraAdapter:
    """A loaded LoRA adapter: per module, the (A, B) pair and the PEFT scale."""

    config: LoraConfig
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (A [r,in], B [out,r])
    path: Path | None = None

    def modules(self) -> list[str]:
        return sorted(self.weights, key=_module_sort_key)

    def scaling(self, module: str) -> float:
        return self.config.scaling(module)

    def delta(self, module: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The module's full weight delta ``scale · B @ A`` (computed in ``dtype``)."""
        a, b = self.weights[module]
        return (b.to(dtype) @ a.to(dtype)) * self.scaling(module)

    def layers(self) -> list[int]:
        return sorted({i for m in self.weights if (i := layer_index(m)) is not None})

    def max_rank(self) -> int:
        return max((a.shape[0] for a, _ in self.weights.values()), default=0)


def _module_sort_key(module: str) -> tuple[int, str]:
    i = layer_index(module)
    return (-1 if i is None else i, module)


#: a safetensors header larger than this is refused before it is parsed (real adapters: a few hundred KB)
MAX_HEADER_BYTES = 16 << 20
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class AdapterHeader:
    """What a LoRA folder holds, read from its files' headers without loading a tensor."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    max_rank: int
    weights_bytes: int

    def delta_shapes(self) -> dict[str, tuple[int, int]]:
        """``{module: (out, in)}`` of each module's delta B @ A; AdapterError for a module without both A and B or
        with A and B that do not chain."""
        parts: dict[str, dict[str, tuple[int, ...]]] = {}
        for key, shape in self.shapes.items():
            module, which = parse_lora_key(key)
            parts.setdefault(module, {})[which] = shape
        out = {}
        for module, ab in parts.items():
            if set(ab) != {"A", "B"}:
                raise AdapterError(f"module {module} has lora_{''.join(ab)} but not both A and B")
            (r, n_in), (n_out, r_b) = ab["A"], ab["B"]
            if r != r_b:
                raise AdapterError(f"module {module} has inconsistent shapes A{list(ab['A'])} B{list(ab['B'])}")
            out[module] = (n_out, n_in)
        return out


def inspect_adapter(path: str | Path, *, max_rank: int | None = None, max_bytes: int | None = None) -> AdapterHeader:
    """Check a LoRA folder from its safetensors header, before any tensor is read.

    Refuses (AdapterError naming the file): a missing folder or file, a symbolic link inside the folder, ``.bin``
    weights without safetensors, a header that is oversized, truncated or not JSON, tensor data that runs past
    the end of the file, tensor keys that are not LoRA A/B keys, a rank over ``max_rank``, weights over
    ``max_bytes``. Costs two small reads however large the file claims to be."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        raise AdapterError(f"adapter folder {path} does not exist" if not path.exists() else
                           f"adapter folder {path} is a symbolic link: give the real folder")
    links = sorted(p.name for p in path.iterdir() if p.is_symlink())
    if links:
        raise AdapterError(f"{path}: {', '.join(links)} is a symbolic link; adapter folders must hold their own files")
    w_path = path / WEIGHTS_FILE
    if not (path / CONFIG_FILE).is_file():
        raise AdapterError(f"{path}: missing {CONFIG_FILE}")
    if not w_path.is_file():
        others = [p.name for p in path.glob("adapter_model.*")]
        hint = f" (found {', '.join(others)}; only safetensors are accepted)" if others else ""
        raise AdapterError(f"{path}: missing {WEIGHTS_FILE}{hint}")
    size = w_path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise AdapterError(f"{w_path}: {size} bytes is over the {max_bytes}-byte limit for an adapter")
    with open(w_path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise AdapterError(f"{w_path}: truncated (no safetensors header)")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES or n > size - 8:
            why = "over the limit" if n > MAX_HEADER_BYTES else "past the end of the file"
            raise AdapterError(f"{w_path}: header claims {n} bytes ({why}); not a valid safetensors file")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            raise AdapterError(f"{w_path}: the safetensors header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise AdapterError(f"{w_path}: the safetensors header is not a JSON object")
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        parse_lora_key(key)
        try:
            shape = tuple(int(x) for x in info["shape"])
            begin, stop = (int(x) for x in info["data_offsets"])
            dtype = str(info["dtype"])
        except (KeyError, TypeError, ValueError) as e:
            raise AdapterError(f"{w_path}: tensor {key} has a malformed header entry ({e})") from e
        if len(shape) != 2 or dtype not in _DTYPE_BYTES:
            raise AdapterError(f"{w_path}: tensor {key} must be a 2-D float matrix, got {dtype}{list(shape)}")
        if stop - begin != shape[0] * shape[1] * _DTYPE_BYTES[dtype]:
            raise AdapterError(f"{w_path}: tensor {key} claims {stop - begin} bytes for {dtype}{list(shape)}")
        shapes[key], dtypes[key] = shape, dtype
        end = max(end, stop)
    if not shapes:
        raise AdapterError(f"{w_path}: holds no LoRA tensors")
    if 8 + n + end > size:
        raise AdapterError(f"{w_path}: truncated: its tensors need {8 + n + end} bytes, the file has {size}")
    ranks = [s[0] for k, s in shapes.items() if parse_lora_key(k)[1] == "A"]
    rank = max(ranks) if ranks else 0
    if max_rank is not None and rank > max_rank:
        raise AdapterError(f"{path}: rank {rank} is over the limit of {max_rank}")
    return AdapterHeader(shapes=shapes, dtypes=dtypes, max_rank=rank, weights_bytes=size)


def load_adapter(path: str | Path, *, dtype: torch.dtype | None = None) -> LoraAdapter:
    """Read and validate a PEFT LoRA folder.

    Checks: both files exist; every tensor key is a LoRA A/B key; every module has both A and B; shapes agree
    (A is [r, in], B is [out, r], same r); r matches the config (rank_pattern included); no NaN/Inf.
    """
    path = Path(path)
    cfg_path, w_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not path.is_dir():
        raise AdapterError(f"adapter folder {path} does not exist")
    if not cfg_path.is_file():
        raise AdapterError(f"{path}: missing {CONFIG_FILE}")
    if not w_path.is_file():
        others = [p.name for p in path.glob("adapter_model.*")]
        hint = f" (found {', '.join(others)}; only safetensors are accepted)" if others else ""
        raise AdapterError(f"{path}: missing {WEIGHTS_FILE}{hint}")
    try:
        cfg = LoraConfig.from_dict(json.loads(cfg_path.read_text()), source=str(cfg_path))
    except json.JSONDecodeError as e:
        raise AdapterError(f"{cfg_path}: not valid JSON ({e})") from e
    parts: dict[str, dict[str, torch.Tensor]] = {}
    try:
        with safe_open(str(w_path), framework="pt") as f:
            for key in f.keys():
                module, which = parse_lora_key(key)
                t = f.get_tensor(key)
                parts.setdefault(module, {})[which] = t.to(dtype) if dtype is not None else t
    except AdapterError:
        raise
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise AdapterError(f"{w_path}: cannot read safetensors ({e})") from e
    if not parts:
        raise AdapterError(f"{w_path}: holds no LoRA tensors")
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{path}: module {module} has lora_{''.join(ab)} but not both A and B")
        a, b = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise AdapterError(
                f"{path}: module {module} has inconsistent shapes A{tuple(a.shape)} B{tuple(b.shape)}"
            )
        if a.shape[0] != cfg.rank_of(module):
            raise AdapterError(
                f"{path}: module {module} has rank {a.shape[0]} but the config says {cfg.rank_of(module)}"
            )
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise AdapterError(f"{path}: module {module} contains NaN or Inf weights")
        weights[module] = (a, b)
    return LoraAdapter(config=cfg, weights=weights, path=path)


def build_config(
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    base_model: str | None,
    scale_one: bool = True,
    lora_alpha: float | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An ``adapter_config.json`` dict for the given modules.

    With ``scale_one`` (our default for every adapter we write) the scale is folded into B, so every module gets
    ``alpha == r``: ``r`` is the largest rank, and modules with another rank get a ``rank_pattern`` entry with a
    mirrored ``alpha_pattern`` entry. vLLM 0.32 honours both, and PEFT loads the folder.
    """
    ranks = {m: a.shape[0] for m, (a, _) in modules.items()}
    r = max(ranks.values())
    rank_pattern = {_exact_pattern(m): k for m, k in ranks.items() if k != r}
    cfg: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": r,
        "lora_alpha": float(r if scale_one else (lora_alpha if lora_alpha is not None else r)),
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "target_modules": sorted({module_kind(m) for m in modules}),
        "rank_pattern": rank_pattern,
        "alpha_pattern": {k: float(v) for k, v in rank_pattern.items()} if scale_one else {},
    }
    if extra:
        cfg.update(extra)
    return cfg


def _exact_pattern(module: str) -> str:
    """A rank_pattern key that matches exactly this module (anchored by PEFT's suffix rule; dots escaped)."""
    return re.escape(module)


def save_adapter(
    folder: str | Path,
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    base_model: str | None,
    dtype: torch.dtype | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write a PEFT LoRA folder (config + one safetensors file). ``modules``: module -> (A [r,in], B [out,r]).

    Pass ``config`` to write a ready config; otherwise a scale-one config is built with :func:`build_config`.
    Refuses NaN/Inf and inconsistent shapes, so a bad adapter is never written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for module, (a, b) in sorted(modules.items(), key=lambda kv: _module_sort_key(kv[0])):
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise AdapterError(f"module {module}: inconsistent shapes A{tuple(a.shape)} B{tuple(b.shape)}")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise AdapterError(f"module {module}: NaN or Inf weights")
        tensors[lora_key(module, "A")] = (a.to(dtype) if dtype else a).contiguous()
        tensors[lora_key(module, "B")] = (b.to(dtype) if dtype else b).contiguous()
    cfg = config if config is not None else build_config(modules, base_model=base_model)
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return folder


def selection_of(safety: str | Path) -> dict | None:
    """The ``selection`` block of a safety adapter's manifest (written by layer selection, read by calibration),
    or None; its ``selected`` layers come back as ints."""
    sel = read_manifest(safety).get("selection")
    if sel is None:
        return None
    if not isinstance(sel, dict) or not isinstance(sel.get("selected"), list):
        raise ArtifactError(f"{safety}/manifest.json: 'selection' must hold a 'selected' list of layer indices")
    try:
        sel["selected"] = [int(x) for x in sel["selected"]]
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"{safety}/manifest.json: selection.selected must be integers") from e
    return sel
