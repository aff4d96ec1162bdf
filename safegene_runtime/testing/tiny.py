"""Deterministic tiny models and adapters for tests and benchmarks (no model hub needed).

* :func:`make_tiny_model` writes a random Llama-, Qwen2-, Mistral- or Gemma-architecture checkpoint
  (:data:`TINY_ARCHS`) with its own byte-level BPE tokenizer and a ChatML chat template. head_dim is 64 because
  vLLM's CPU attention kernel rejects smaller heads; everything else is as small as possible so that a vLLM engine
  starts fast.
* :func:`make_random_lora` writes a random PEFT LoRA folder for such a model (B is random, not zero, so the adapter
  changes the output).
* :func:`make_perturbed_model` writes a copy of a model with every linear weight perturbed: a stand-in for a
  "degraded" fine-tune when testing extraction.

Same arguments, same bytes: every function seeds its own generator.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file, save_file

from ..adapters import LINEAR_MODULES, build_config, layer_index, module_kind, save_adapter
from ..checkpoints import Checkpoint

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


#: The architectures :func:`make_tiny_model` can write: ``arch`` -> (transformers config and model class names, what
#: differs from Llama). Module names are the same in all four (``model.layers.N.{self_attn,mlp}.<kind>``), which is why
#: the pipeline needs no per-architecture table; these models exist so that the tests see each family's real quirks.
TINY_ARCHS: dict[str, tuple[str, str, str]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", "the reference: separate lm_head, SiLU-gated MLP, RMSNorm"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "bias on q/k/v_proj (randomised, so a dropped bias shows)"),
    "mistral": ("MistralConfig", "MistralForCausalLM", "Llama's layers with a sliding-window config field"),
    "gemma": ("GemmaConfig", "GemmaForCausalLM",
              "tied embeddings, embeddings scaled by sqrt(hidden), GeGLU MLP, RMSNorm weight used as (1 + w)"),
}


def make_tiny_model(
    out_dir: str | Path,
    *,
    arch: str = "llama",
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
    """Write a random ``arch`` checkpoint (:data:`TINY_ARCHS`) + tokenizer + chat template to ``out_dir`` (created;
    must not exist or be empty).

    ``initializer_range`` is larger than Llama's 0.02 so that greedy decoding has clear winners: equality tests
    between two exact computations (stacked LoRA vs merged weights) then do not hinge on fp round-off ties.
    Every architecture gets the same tokenizer and head_dim (``hidden_size // num_heads``, 64 by default).
    """
    # lazy: transformers/tokenizers take seconds to import; only the factories need them
    import transformers
    from transformers import PreTrainedTokenizerFast

    if arch not in TINY_ARCHS:
        raise ValueError(f"unknown tiny architecture {arch!r}: choose from {', '.join(TINY_ARCHS)}")
    config_cls, model_cls = (getattr(transformers, n) for n in TINY_ARCHS[arch][:2])
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
    extra: dict = {"tie_word_embeddings": False}
    if arch == "gemma":
        # hidden_activation (not hidden_act) names Gemma's GeGLU: vLLM warns and guesses without it
        extra = {"tie_word_embeddings": True, "hidden_activation": "gelu_pytorch_tanh"}
    elif arch == "mistral":
        extra["sliding_window"] = 4096  # Mistral-7B-v0.1's value; longer than any test sequence
    config = config_cls(
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
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )
    torch.manual_seed(seed)
    model = model_cls(config).to(dtype)
    if arch == "qwen2":
        # transformers initialises biases to zero, which would hide a bias that some stage drops or adds twice
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("proj.bias"):
                    p.copy_(torch.randn(p.shape, generator=g) * initializer_range)
    elif arch == "gemma":
        # Gemma multiplies the embeddings by sqrt(hidden) and ties the head, so with random weights the token's own
        # embedding dominates the residual stream and greedy decoding repeats the last token forever. Smaller
        # embeddings and a final norm scale of ~10 (weight 9, used as 1 + w) give varied tokens with clear margins;
        # random norm weights make the (1 + w) convention matter everywhere.
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            model.model.embed_tokens.weight.mul_(0.2)
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (9.0 if name == "model.norm.weight" else 0.0))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def linear_shapes(model_dir: str | Path) -> dict[str, tuple[int, int]]:
    """(out, in) of each linear module kind, read from the checkpoint's first layer that has it."""
    ck = Checkpoint(model_dir)
    shapes: dict[str, tuple[int, int]] = {}
    for m in ck.linear_modules():
        shapes.setdefault(module_kind(m), ck.shape(f"{m}.weight"))  # type: ignore[arg-type]
    return shapes


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

    Module names and shapes come from the checkpoint itself, so the adapter fits any architecture whose decoder
    layers :meth:`Checkpoint.linear_modules` finds. ``magnitude`` sets the typical size of ``scale·B@A`` entries
    relative to the base weights (≈0.1 std).
    """
    ck = Checkpoint(base_dir)
    names = {(layer_index(m), module_kind(m)): m for m in ck.linear_modules()}
    layer_ids = list(layers) if layers is not None else sorted({i for i, _ in names if i is not None})
    alpha = float(alpha if alpha is not None else 2 * rank)
    scale = alpha / rank
    g = torch.Generator().manual_seed(seed)
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for layer in layer_ids:
        for kind in modules:
            if (layer, kind) not in names:
                raise ValueError(f"{base_dir}: no {kind} weight in decoder layer {layer}")
            module = names[(layer, kind)]
            out_f, in_f = ck.shape(f"{module}.weight")
            a = torch.randn(rank, in_f, generator=g) / in_f**0.5
            b = torch.randn(out_f, rank, generator=g) * (magnitude / (scale * rank**0.5))
            weights[module] = (a.to(dtype), b.to(dtype))
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
