"""Content digests (sha256, hex): one function per thing that is hashed, so each value has one definition.

Every value here is persisted (artifact manifests, coefficient files, the server's cache keys and versions, the
SmolLM2 study's stage hashes), so a function's output must never change for the same input; a new need gets a
new function.

* :func:`json_digest` — any JSON-able object as canonical JSON (sorted keys, no whitespace, UTF-8): coefficient
  digests (``Coefficients.digest``), the SmolLM2 study's stage hashes, the server's calibration cache key;
* :func:`prompt_set_digest` — a prompt collection as a *set* (sorted normalised texts, one per line): evaluation
  manifests, the prompt-harm head's data digests;
* :func:`prompt_list_digest` — an ordered prompt list, verbatim texts: layer selection's manifest;
* :func:`chat_list_digest` — an ordered shot list, as chat messages: calibration's coefficients meta;
* :func:`adapter_digest` — a LoRA folder's config and weights files: the server's adapter versions and cache keys.

Why prompts are hashed three ways (each kept, as changing one would change the persisted values and, through
the manifests, the content ids of every artifact built on them):

* an evaluation set is identified by *which prompts* it holds: :func:`prompt_set_digest` ignores order, case,
  punctuation and spacing (``text.normalise``), so the same benchmark read from another file or in another order
  has the same digest, and two reports can tell whether they measured the same prompts;
* layer selection records the probe prompts it used, in order and verbatim (:func:`prompt_list_digest`): the same
  prompts from a JSONL or a CSV hash alike, but a reordered or edited probe set is a different input;
* calibration records its shots as the chat conversations the teachers saw (:func:`chat_list_digest`): a system
  message or an earlier turn changes the teachers' answers, so it changes the digest.

Folder identities live beside the artifacts they identify: ``artifacts.content_id`` (an artifact folder, manifest
without its volatile fields), ``artifacts.fingerprint`` (a model's weight/config files) and
``checkpoints.weights_fingerprint`` (a model's tensors, however sharded); they stream files through one hash and
are not JSON digests.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable, Sequence

from .artifacts import canonical_json, sha256_bytes, sha256_file
from .text import normalise

#: the files of a PEFT LoRA folder that :func:`adapter_digest` covers, in hashing order
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def json_digest(obj: Any) -> str:
    """sha256 of the object's canonical JSON (:func:`~.artifacts.canonical_json`)."""
    return sha256_bytes(canonical_json(obj).encode())


def prompt_set_digest(texts: Iterable[str]) -> str:
    """Order-independent digest of prompt texts: sha256 over the sorted normalised texts, each followed by a newline."""
    h = hashlib.sha256()
    for t in sorted(normalise(x) for x in texts):
        h.update(t.encode() + b"\n")
    return h.hexdigest()


def prompt_list_digest(prompts: Sequence) -> str:
    """Digest of an ordered prompt list by its texts (strings, or anything with a ``prompt``, e.g. ``Example``)."""
    return json_digest([getattr(p, "prompt", p) for p in prompts])


def chat_list_digest(shots: Sequence) -> str:
    """Digest of an ordered shot list by its chat messages (``Example.messages``; a plain string stands for itself)."""
    return json_digest([getattr(s, "messages", None) or str(s) for s in shots])


def adapter_digest(folder: str | Path) -> str:
    """Digest of a LoRA adapter folder's content: for each of :data:`ADAPTER_FILES` that exists, its name, a NUL
    byte and its sha256, through one sha256. Other files (manifest, README) do not count."""
    h = hashlib.sha256()
    for name in ADAPTER_FILES:
        p = Path(folder) / name
        if p.is_file():
            h.update(name.encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()


__all__ = ["ADAPTER_FILES", "json_digest", "prompt_set_digest", "prompt_list_digest", "chat_list_digest",
           "adapter_digest"]
