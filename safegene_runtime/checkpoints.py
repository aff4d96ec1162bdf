"""Tensor-by-tensor access to a Hugging Face safetensors checkpoint (single file or sharded).

Extraction, merging and Safe LoRA's projection compare or rewrite whole models, and the models can be larger than
RAM. :class:`Checkpoint` therefore reads only the safetensors *headers* up front (names, dtypes, shapes, offsets),
and :meth:`Checkpoint.get` reads exactly one tensor's byte range from the owning shard with plain file I/O. A memory
map (``safe_open``) would let the touched pages of every tensor accumulate in the process's resident set, so peak
memory would follow the model instead of the largest tensor.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from .adapters import LINEAR_MODULES, AdapterError, LoraAdapter, layer_index, module_kind
from .artifacts import ArtifactError, cached_digest, canonical_json, fingerprint, read_manifest

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"

#: safetensors header dtype names -> torch dtypes
_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"),
                     ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _attr):
        _DTYPES[_name] = getattr(torch, _attr)

#: dtype names users give (``safegene merge --dtype``, ``safegene extract --dtype``) -> torch dtypes
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``None`` (keep the base's), a ``torch`` floating dtype, or one of :data:`DTYPES`' names."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if isinstance(dtype, torch.dtype) and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(DTYPES))}") from None


#: decoder-layer linear weights of Llama / Qwen2 / Mistral / Gemma: ``model.layers.N.{self_attn,mlp}.<kind>.weight``
_LINEAR_RE = re.compile(
    r"^(?P<module>(?:.*\.)?layers\.\d+\.(?:self_attn|mlp)\.(?P<kind>" + "|".join(LINEAR_MODULES) + r"))\.weight$"
)


class CheckpointError(ArtifactError):
    """A checkpoint folder is missing, incomplete or unreadable; the message names the file."""


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor name -> dtype/shape/offsets, plus ``__metadata__``)."""
    try:
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw_len)
            if n > 100 * 1024 * 1024:
                raise CheckpointError(f"{path}: not a safetensors file (header length {n} is implausible)")
            header = f.read(n)
            if len(header) != n:
                raise CheckpointError(f"{path}: truncated safetensors header")
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from e
    try:
        return json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: safetensors header is not valid JSON ({e})") from e


class Checkpoint:
    """A HF model folder read one tensor at a time.

    >>> ck = Checkpoint("models/smollm2")          # doctest: +SKIP
    >>> ck.linear_modules()[:1]                    # doctest: +SKIP
    ['model.layers.0.self_attn.q_proj']
    >>> ck.get("model.layers.0.self_attn.q_proj.weight").shape   # doctest: +SKIP
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise CheckpointError(f"model folder {self.path} does not exist")
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path} is not a folder (expected a Hugging Face model folder)")
        index_path, single = self.path / INDEX_FILE, self.path / SINGLE_FILE
        # name -> shard file name
        self._where: dict[str, str] = {}
        # name -> header entry {"dtype", "shape", "data_offsets"}
        self._info: dict[str, dict[str, Any]] = {}
        self._shard_metadata: dict[str, dict[str, str]] = {}
        self._data_start: dict[str, int] = {}  # shard -> byte offset of its data section
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index_path}: not a valid safetensors index (needs a 'weight_map')") from e
            shards = sorted(set(weight_map.values()))
            for shard in shards:
                if not (self.path / shard).is_file():
                    raise CheckpointError(f"{self.path}: shard {shard} listed in {INDEX_FILE} is missing")
            self._load_headers(shards)
            for name, shard in weight_map.items():
                if name not in self._info or self._where[name] != shard:
                    raise CheckpointError(f"{index_path}: tensor {name} is not in shard {shard}")
        elif single.is_file():
            self._load_headers([SINGLE_FILE])
        else:
            found = sorted(p.name for p in self.path.glob("*.safetensors"))
            others = sorted(p.name for p in self.path.iterdir() if p.suffix in {".bin", ".pt", ".gguf"})
            if len(found) > 0:
                hint = f"found {', '.join(found[:3])} but no {INDEX_FILE}"
            elif others:
                hint = f"found only {', '.join(others[:3])}; convert to safetensors first"
            else:
                hint = "no safetensors files at all"
            raise CheckpointError(f"{self.path}: no {SINGLE_FILE} or {INDEX_FILE} ({hint})")

    def _load_headers(self, shards: list[str]) -> None:
        for shard in shards:
            header = read_safetensors_header(self.path / shard)
            with open(self.path / shard, "rb") as f:
                self._data_start[shard] = 8 + struct.unpack("<Q", f.read(8))[0]
            self._shard_metadata[shard] = dict(header.pop("__metadata__", None) or {})
            for name, info in header.items():
                if name in self._where:
                    raise CheckpointError(f"{self.path}: tensor {name} appears in both {self._where[name]} and {shard}")
                self._where[name] = shard
                self._info[name] = info

    # --- metadata -------------------------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def __len__(self) -> int:
        return len(self._where)

    def shards(self) -> list[str]:
        """Shard file names (one for a single-file checkpoint), sorted."""
        return sorted(self._shard_metadata)

    def shard_of(self, name: str) -> str:
        self._require(name)
        return self._where[name]

    def shard_keys(self, shard: str) -> list[str]:
        return sorted(n for n, s in self._where.items() if s == shard)

    def shard_metadata(self, shard: str) -> dict[str, str]:
        return dict(self._shard_metadata[shard])

    @property
    def is_sharded(self) -> bool:
        return (self.path / INDEX_FILE).is_file()

    def shape(self, name: str) -> tuple[int, ...]:
        self._require(name)
        return tuple(int(x) for x in self._info[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        self._require(name)
        code = self._info[name]["dtype"]
        if code not in _DTYPES:
            raise CheckpointError(f"{self.path}: tensor {name} has unsupported dtype {code}")
        return _DTYPES[code]

    def nbytes(self, name: str) -> int:
        self._require(name)
        start, end = self._info[name]["data_offsets"]
        return int(end) - int(start)

    def total_bytes(self) -> int:
        return sum(self.nbytes(n) for n in self._where)

    @cached_property
    def config(self) -> dict[str, Any]:
        """``config.json`` as a dict ({} when the folder has none)."""
        p = self.path / CONFIG_FILE
        if not p.is_file():
            return {}
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{p}: not valid JSON ({e})") from e

    def linear_modules(self, kinds: tuple[str, ...] | list[str] | None = None) -> list[str]:
        """Module names (no ``.weight``) of the decoder layers' linear weights, in layer then q,k,v,o,gate,up,down order."""
        wanted = set(kinds) if kinds is not None else set(LINEAR_MODULES)
        mods = []
        for name in self._where:
            m = _LINEAR_RE.match(name)
            if m and m.group("kind") in wanted:
                mods.append(m.group("module"))
        order = {k: i for i, k in enumerate(LINEAR_MODULES)}
        return sorted(mods, key=lambda m: (layer_index(m) or 0, order[module_kind(m)], m))

    # --- data ---------------------------------------------------------------------------------------------------

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor, read with plain file I/O from its byte range in the shard.

        No memory map: mapped pages that were touched count in the process's resident set until unmapped, so
        reading through ``safe_open`` made peak RSS follow the model. A read into a fresh buffer costs exactly
        the tensor's size, and the buffer goes away with the tensor.
        """
        self._require(name)
        shard = self._where[name]
        path = self.path / shard
        start, end = (int(x) for x in self._info[name]["data_offsets"])
        buf = bytearray(end - start)
        try:
            with open(path, "rb", buffering=0) as f:
                f.seek(self._data_start[shard] + start)
                got = f.readinto(buf)
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read tensor {name} ({e.strerror or e})") from e
        if got != len(buf):
            raise CheckpointError(f"{path}: truncated: tensor {name} needs {len(buf)} bytes, file has {got}")
        shape, dt = self.shape(name), self.dtype(name)
        t = torch.frombuffer(buf, dtype=dt).reshape(shape) if buf else torch.empty(shape, dtype=dt)
        return t.to(dtype) if dtype is not None and t.dtype != dtype else t

    def _require(self, name: str) -> None:
        if name not in self._where:
            raise CheckpointError(f"{self.path}: no tensor named {name}")

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, tensors={len(self)}, shards={len(self._shard_metadata)})"


def check_adapter_fits(base: Checkpoint, adapter: Any, who: str) -> None:
    """Refuse an adapter made for another base model: each of its modules must be a weight of ``base`` whose shape
    equals the module's delta ``(out, in)``. The error names the first module that does not fit."""
    check_delta_shapes(base, {m: (b.shape[0], a.shape[1]) for m, (a, b) in adapter.weights.items()}, who,
                       adapter.path)


def check_delta_shapes(base: Checkpoint, deltas: dict[str, tuple[int, int]], who: str, path: Any) -> None:
    """:func:`check_adapter_fits` from ``{module: (out, in)}`` (e.g. read from a safetensors header)."""
    for m, got in deltas.items():
        key = f"{m}.weight"
        if key not in base:
            raise AdapterError(
                f"{who} {path}: module {m} is not a weight of base model {base.path} "
                "(made for another base model?)"
            )
        if base.shape(key) != tuple(got):
            raise AdapterError(
                f"{who} {path}: module {m} has delta shape {tuple(got)} but base model {base.path} has "
                f"{base.shape(key)} (made for another base model?)"
            )


def local_model(path: str | None) -> Checkpoint | None:
    """The checkpoint at ``path`` if it names a readable local model folder (hub ids and stale paths give None)."""
    if not path:
        return None
    p = Path(path)
    if not (p.is_dir() and (p / CONFIG_FILE).is_file()):
        return None
    try:
        return Checkpoint(p)
    except CheckpointError:
        return None


def built_for(adapter: LoraAdapter, manifest: dict[str, Any] | None = None) -> tuple[str | None, str | None]:
    """(weights fingerprint, description) of the base model an adapter says it was built on.

    The fingerprint is the manifest's ``base_model.weights_fingerprint`` (safety adapters from extraction record
    it), else :func:`weights_fingerprint` of the local model folder named by the config's ``base_model_name_or_path``;
    None when neither says (a hub id, a stale path, no manifest). The description is the manifest's recorded path,
    else the config's name.
    """
    if manifest is None:
        manifest = read_manifest(adapter.path) if adapter.path else {}
    ident = manifest.get("base_model") or {}
    claimed = adapter.config.base_model_name_or_path
    fp = ident.get("weights_fingerprint")
    if fp is None:
        local = local_model(claimed)
        fp = weights_fingerprint(local.path) if local is not None else None
    return fp, ident.get("path") or claimed


def check_same_base(adapter: LoraAdapter, who: str, base: Checkpoint, *, but: str, refusing: str,
                    base_fp: str | None = None, manifest: dict[str, Any] | None = None) -> None:
    """Refuse an adapter that says it was built on another base model than ``base`` (same weights, however sharded:
    :func:`weights_fingerprint`); nothing to check when the adapter does not say (:func:`built_for`).

    The error reads ``<who> <path> was built for base model <X> (fingerprint ..) but <but> (fingerprint ..):
    <refusing>``; ``but`` names ``base`` in the caller's terms (the task adapter's base, the base to merge into).
    Stacking and merging both refuse through here; :func:`check_adapter_fits` then checks the module shapes.
    """
    fp, desc = built_for(adapter, manifest)
    if fp is None:
        return
    base_fp = base_fp if base_fp is not None else weights_fingerprint(base.path)
    if fp != base_fp:
        raise AdapterError(f"{who} {adapter.path} was built for base model {desc} (fingerprint {fp[:12]}) but {but} "
                           f"(fingerprint {base_fp[:12]}): {refusing}")


def weights_fingerprint(path: str | Path) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor in name order: the same weights give the same value
    however they are sharded, and config/tokenizer edits do not change it (unlike ``artifacts.fingerprint``).

    Cached in ``$SAFEGENE_HOME/weights_fingerprints.json`` by (file, size, mtime), as base models can be many GB.
    """
    ck = Checkpoint(path)
    files = [ck.path.resolve() / s for s in ck.shards()]

    def compute() -> str:
        h = hashlib.sha256()
        for name in ck.keys():
            info = ck._info[name]
            h.update(canonical_json([name, info["dtype"], info["shape"]]).encode() + b"\0")
            shard = ck.path / ck.shard_of(name)
            start, end = (int(x) for x in info["data_offsets"])
            with open(shard, "rb") as f:
                f.seek(ck._data_start[ck.shard_of(name)] + start)
                left = end - start
                while left > 0:
                    chunk = f.read(min(left, 1 << 24))
                    if not chunk:
                        raise CheckpointError(f"{shard}: truncated data for tensor {name}")
                    h.update(chunk)
                    left -= len(chunk)
        return h.hexdigest()

    return cached_digest("weights_fingerprints.json", files, compute)


def model_identity(path: str | Path) -> dict[str, Any]:
    """What identifies a base model: its content fingerprint plus the config fields that fix every weight shape.

    Stored in safety-adapter manifests, so that stacking and merging can refuse an adapter built on another base.
    """
    path = Path(path).resolve()
    cfg = Checkpoint(path).config
    ident: dict[str, Any] = {"path": str(path), "fingerprint": fingerprint(path),
                             "weights_fingerprint": weights_fingerprint(path)}
    for k in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "vocab_size"):
        if k in cfg:
            ident[k] = cfg[k]
    return ident
