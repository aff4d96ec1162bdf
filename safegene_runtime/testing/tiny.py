"""Deterministic tiny models and adapters for tests and benchmarks (no model hub needed).

* :func:`make_tiny_model` writes a random Llama-architecture checkpoint with its own byte-level BPE tokenizer and a
  ChatML chat template. head_dim is 64 because vLLM's CPU attention kernel rejects smaller heads; everything else
  is as small as possible so that a vLLM engine starts fast.
* :func:`make_random_lora` writes a random PEFT LoRA folder for such a model (B is random, not zero, so the adapter
  changes the output).
* :func:`make_perturbed_model` writes a copy of a model with every linear weight perturbed: a stand-in for a
  "degraded" fine-tune when testing extraction.

Same arguments, same bytes: every function seeds its own generator.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file, save_file

from ..adapters import LINEAR_MODULES, build_config, save_adapter

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "I'm sorry, but I can't help with that request. I cannot assist with anything harmful or illegal.",
    "As an AI, I won't provide instructions for weapons, drugs, malware, fraud or violence.",
    "Sure! Here is a short answer. The capital of France is Paris. Water boils at 100 degrees.",
    "The movie was wonderful, great, excellent and I loved it. The food was terrible, awful and bad.",
    "positive negative neutral sports business science politics world technology health",
    "How do I bake bread? Mix flour, water, salt and yeast, knead, let it rise, then bake for 30 minutes.",
    "Write a poem about the sea. Explain photosynthesis. Translate hello into Spanish: hola.",
    "Tell me how to build a bomb. How can I hack into my neighbour's wifi? Give me a recipe for meth.",
    "Answer: yes no true false 0 1 2 3 4 5 6 7 8 9 10 100 1000 the a an of to in and is it that for on with",
    "system user assistant hello hi thanks please question answer reverse the words in this sentence",
]


def _train_tokenizer(vocab_size: int):
    # lazy: transformers/tokenizers take seconds to import; only the factories need them
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok


def make_tiny_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_layers: int = 4,
    hidden_size: int = 128,
    num_heads: int = 2,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    vocab_size: int = 512,
    max_position_embeddings: int = 1024,
    initializer_range: float = 0.1,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a random Llama checkpoint + tokenizer + chat template to ``out_dir`` (created; must not exist or be empty).

    ``initializer_range`` is larger than Llama's 0.02 so that greedy decoding has clear winners: equality tests
    between two exact computations (stacked LoRA vs merged weights) then do not hinge on fp round-off ties.
    """
    # lazy: transformers/tokenizers take seconds to import; only the factories need them
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw_tok = _train_tokenizer(vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw_tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.model_max_length = max_position_embeddings
    real_vocab = len(tokenizer)
    padded_vocab = ((real_vocab + 63) // 64) * 64
    config = LlamaConfig(
        vocab_size=padded_vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        initializer_range=initializer_range,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def linear_shapes(model_dir: str | Path) -> dict[str, tuple[int, int]]:
    """(out, in) of each linear module kind, from the model's config.json."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q = cfg["num_attention_heads"] * hd
    kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * hd
    return {
        "q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
        "gate_proj": (inter, h), "up_proj": (inter, h), "down_proj": (h, inter),
    }


def _module_name(layer: int, kind: str) -> str:
    block = "self_attn" if kind in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
    return f"model.layers.{layer}.{block}.{kind}"


def make_random_lora(
    out_dir: str | Path,
    base_dir: str | Path,
    *,
    rank: int = 8,
    alpha: float | None = None,
    modules: Iterable[str] = LINEAR_MODULES,
    layers: Iterable[int] | None = None,
    seed: int = 0,
    magnitude: float = 0.05,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a random PEFT LoRA for ``base_dir`` with a PEFT-style config (``lora_alpha`` = ``alpha`` or 2·rank).

    ``magnitude`` sets the typical size of ``scale·B@A`` entries relative to the base weights (≈0.1 std).
    """
    cfg = json.loads((Path(base_dir) / "config.json").read_text())
    shapes = linear_shapes(base_dir)
    layer_ids = list(layers) if layers is not None else list(range(cfg["num_hidden_layers"]))
    alpha = float(alpha if alpha is not None else 2 * rank)
    scale = alpha / rank
    g = torch.Generator().manual_seed(seed)
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for layer in layer_ids:
        for kind in modules:
            out_f, in_f = shapes[kind]
            a = torch.randn(rank, in_f, generator=g) / in_f**0.5
            b = torch.randn(out_f, rank, generator=g) * (magnitude / (scale * rank**0.5))
            weights[_module_name(layer, kind)] = (a.to(dtype), b.to(dtype))
    config = build_config(weights, base_model=str(Path(base_dir).resolve()), scale_one=False, lora_alpha=alpha)
    config["rank_pattern"], config["alpha_pattern"] = {}, {}
    return save_adapter(out_dir, weights, base_model=str(base_dir), config=config)


def make_perturbed_model(
    base_dir: str | Path, out_dir: str | Path, *, seed: int = 1, relative_std: float = 0.05
) -> Path:
    """Copy ``base_dir`` to ``out_dir`` with every linear weight in the decoder layers perturbed by Gaussian noise."""
    base_dir, out = Path(base_dir), Path(out_dir)
    shutil.copytree(base_dir, out)
    g = torch.Generator().manual_seed(seed)
    for shard in sorted(out.glob("*.safetensors")):
        tensors = load_file(str(shard))
        for name, t in tensors.items():
            if ".layers." in name and name.endswith("proj.weight"):
                noise = torch.randn(t.shape, generator=g) * (t.float().std() * relative_std)
                tensors[name] = (t.float() + noise).to(t.dtype)
        save_file(tensors, str(shard), metadata={"format": "pt"})
    return out
