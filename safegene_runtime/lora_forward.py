"""Run a Hugging Face causal LM with extra low-rank deltas on its Linear modules, without copying base weights.

Calibration (stage 3) needs the forward pass of ``W_l(A) + ΔT_l + λ_l · B_S,l A_S,l`` with the λ_l trainable and
everything else frozen. Merging the deltas into weights would need a weight copy per step and would not give
gradients for λ; instead a forward hook on each affected ``nn.Linear`` adds the low-rank terms to its output:

    y = W x  (+ s_T B_T (A_T x))  (+ λ_l B_S (A_S x))

which is exact (the same math PEFT and vLLM use) and costs O(rank) per token. The two kinds of delta can be switched
on and off (:meth:`LoraForward.mode`), so one loaded model serves as the aligned base A, the task model A+T, and the
calibrated model A+T+λS.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

from .adapters import MODULE_GROUPS, AdapterError, LoraAdapter, layer_index, module_group
from .artifacts import ArtifactError
from .coefficients import Coefficients


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder-layer list of a HF causal LM (``model.model.layers`` for Llama/Qwen2/Mistral/Gemma)."""
    inner = getattr(model, "model", None)
    if inner is not None and isinstance(getattr(inner, "layers", None), torch.nn.ModuleList):
        return inner.layers
    for name, mod in model.named_modules():
        if name.endswith("layers") and isinstance(mod, torch.nn.ModuleList):
            return mod
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


def _folded(adapter: LoraAdapter, modules: Iterable[str], device, dtype
            ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module -> (A, scale·B) on the device, so that a hook computes ``B' (A x)`` with no extra multiply."""
    return {
        m: (
            adapter.weights[m][0].to(device=device, dtype=dtype),
            (adapter.weights[m][1].to(dtype=torch.float32) * adapter.scaling(m)).to(device=device, dtype=dtype),
        )
        for m in modules
    }


class LoraForward:
    """Forward hooks that add a fixed adapter and a λ-scaled adapter to a model's Linear outputs.

    ``fixed``: an adapter applied as is (the task adapter T). ``scaled``: an adapter whose modules in layer l are
    multiplied by ``lambdas[layers.index(l)]`` (the safety adapter S); modules of S outside ``layers`` are left out
    (λ = 0 there). ``lambdas`` is a ``torch.nn.Parameter``: the only thing with a gradient.

    ``groups`` (e.g. ``("attn", "mlp")``): one λ per layer *and* module group
    (:func:`~safegene_runtime.adapters.module_group`), laid out layer-major: ``lambdas[i * len(groups) + j]`` scales
    the modules of group j in the i-th layer. A group with no module of S in a layer keeps a λ that scales nothing.

    Use as a context manager (or call :meth:`remove`) so the hooks never outlive the calibration.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        fixed: LoraAdapter | None = None,
        scaled: LoraAdapter | None = None,
        layers: Iterable[int] | None = None,
        init: float = 1.0,
        groups: Sequence[str] | None = None,
    ) -> None:
        self.model = model
        p = next(model.parameters())
        device, dtype = p.device, p.dtype
        self.fixed = _folded(fixed, fixed.modules(), device, dtype) if fixed is not None else {}
        if scaled is not None:
            all_layers = scaled.layers()
            self.layers = sorted(set(layers)) if layers is not None else all_layers
            missing = [l for l in self.layers if l not in all_layers]
            if missing:
                raise AdapterError(f"safety adapter has no modules in layer(s) {missing}")
            mods = [m for m in scaled.modules() if layer_index(m) in self.layers]
            self.scaled = _folded(scaled, mods, device, dtype)
        else:
            self.layers, self.scaled = sorted(set(layers or [])), {}
        self.groups = tuple(groups) if groups else None
        self._slot: dict = ({l: i for i, l in enumerate(self.layers)} if self.groups is None else
                            {(l, g): i * len(self.groups) + j for i, l in enumerate(self.layers)
                             for j, g in enumerate(self.groups)})
        if self.groups is not None:
            odd = sorted(m for m in self.scaled if module_group(m) not in self.groups)
            if odd:
                raise AdapterError(f"safety adapter module(s) {odd[:3]} belong to none of the groups {self.groups}")
        self.lambdas = torch.nn.Parameter(torch.full((len(self._slot),), float(init), device=device, dtype=dtype))
        self.use_fixed = True
        self.use_scaled = True
        self._handles = []
        names = dict(model.named_modules())
        for m in sorted(set(self.fixed) | set(self.scaled)):
            mod = names.get(m)
            if not isinstance(mod, torch.nn.Linear):
                raise AdapterError(f"adapter module {m} is not a Linear module of {type(model).__name__}")
            a_w = mod.weight
            for which, table in (("fixed", self.fixed), ("scaled", self.scaled)):
                if m in table:
                    a, b = table[m]
                    if a.shape[1] != a_w.shape[1] or b.shape[0] != a_w.shape[0]:
                        raise AdapterError(
                            f"{which} adapter module {m}: delta {tuple(b.shape[:1]) + tuple(a.shape[1:])} does not "
                            f"match the base weight {tuple(a_w.shape)} (adapter built for another model?)"
                        )
            self._handles.append(mod.register_forward_hook(self._make_hook(m)))

    def _make_hook(self, module: str):
        fixed = self.fixed.get(module)
        scaled = self.scaled.get(module)
        key = layer_index(module) if self.groups is None else (layer_index(module), module_group(module))
        slot = self._slot.get(key) if scaled is not None else None

        def hook(_mod, inputs, output):
            x = inputs[0]
            extra = None
            if fixed is not None and self.use_fixed:
                a, b = fixed
                extra = (x @ a.T) @ b.T
            if scaled is not None and self.use_scaled:
                a, b = scaled
                s = self.lambdas[slot] * ((x @ a.T) @ b.T)
                extra = s if extra is None else extra + s
            return output if extra is None else output + extra

        return hook

    @contextmanager
    def mode(self, *, fixed: bool, scaled: bool) -> Iterator["LoraForward"]:
        """Temporarily switch the deltas: (False, False) is the base A, (True, False) the task model A+T."""
        old = (self.use_fixed, self.use_scaled)
        self.use_fixed, self.use_scaled = fixed, scaled
        try:
            yield self
        finally:
            self.use_fixed, self.use_scaled = old

    @classmethod
    def at(cls, model: torch.nn.Module, coeffs: Coefficients, *, fixed: LoraAdapter | None,
           scaled: LoraAdapter, scale: float = 1.0) -> "LoraForward":
        """Hooks at a coefficients file's λ on its layers, times ``scale``: one λ per layer and module group when the
        file has groups (``attn-mlp`` calibrations), so a grouped file is not flattened to its layer means."""
        layers = sorted(coeffs.layers)
        groups = MODULE_GROUPS if coeffs.groups else None
        lf = cls(model, fixed=fixed, scaled=scaled, layers=layers, init=0.0, groups=groups)
        with torch.no_grad():
            for key, slot in lf._slot.items():
                layer, group = key if groups else (key, None)
                lf.lambdas[slot] = coeffs.of(layer, group) * scale
        return lf

    def set_lambdas(self, values: dict[int, float] | float) -> None:
        """Every λ to one value, or per layer (with ``groups``: every group of the layer)."""
        with torch.no_grad():
            if isinstance(values, dict):
                for l, v in values.items():
                    for g in self.groups or (None,):
                        self.lambdas[self._slot[l if g is None else (l, g)]] = float(v)
            else:
                self.lambdas.fill_(float(values))

    def lambda_dict(self) -> dict[int, float]:
        """λ per layer (with ``groups``: the mean over the layer's groups, its shared value)."""
        if self.groups is None:
            return {l: float(self.lambdas[i].detach()) for l, i in self._slot.items()}
        return {l: sum(gs.values()) / len(gs) for l, gs in self.group_dict().items()}

    def group_dict(self) -> dict[int, dict[str, float]]:
        """λ per layer and group (empty without ``groups``)."""
        if self.groups is None:
            return {}
        return {l: {g: float(self.lambdas[self._slot[(l, g)]].detach()) for g in self.groups} for l in self.layers}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> "LoraForward":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


# --- small shared helpers for the stages that run a model (selection, calibration) -----------------------------


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_causal_lm(path, *, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from a HF folder, frozen, in eval mode, fp32 by default (calibration needs exact grads)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: transformers (~seconds), only to load a model

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ArtifactError(f"model folder {path}: missing config.json (expected a Hugging Face model folder)")
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    model.to(pick_device(device)).eval()
    model.requires_grad_(False)
    return model, tok


def left_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask), both ``[len(seqs), longest]``, with every sequence right-aligned (left padding):
    the last position of each row is its last token, so generation and ``logits_to_keep`` line up across rows."""
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, x in enumerate(seqs):
        ids[i, width - len(x) :] = torch.tensor(x)
        mask[i, width - len(x) :] = 1
    return ids, mask


def render_prompt(tokenizer, prompt) -> str:
    """Chat-templated text ending with the assistant turn's start; ``prompt`` is a string or an ``Example``."""
    messages = getattr(prompt, "messages", None) or [{"role": "user", "content": str(prompt)}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in messages) + "\n"


def encode_prompts(tokenizer, prompts, *, max_tokens: int) -> list[list[int]]:
    """Token ids of each chat-templated prompt, keeping the LAST ``max_tokens`` (the assistant header stays)."""
    out = []
    for p in prompts:
        ids = tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]
        out.append(list(ids[-max_tokens:]))
    return out
