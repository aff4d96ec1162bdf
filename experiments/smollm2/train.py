"""Supervised fine-tuning on chat-formatted (prompt, response) pairs, loss on the assistant tokens only.

Two modes, both plain torch loops (predictable on a 2-core CPU, no Trainer machinery):
  * :func:`train_lora`  - a PEFT LoRA on all linear modules (alignment LoRA, task adapters);
  * :func:`train_full`  - full-parameter SFT (the degraded model D).
Sequences are rendered with the model's own chat template (the same one vLLM serves with), truncated to
``max_len`` tokens; padding and the prompt part are masked out of the loss with -100.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class SFTConfig:
    steps: int = 110
    lr: float = 2e-4
    batch_size: int = 8
    max_len: int = 160
    seed: int = 0
    warmup: int = 5
    weight_decay: float = 0.0
    # LoRA only
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(LINEAR))
    # resumable runs only (``train_lora(ckpt=...)``): save the state every this many steps
    ckpt_every: int = 25

    def to_dict(self) -> dict:
        return asdict(self)


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def encode_pair(tok, prompt: str, response: str, max_len: int, ends: bool = True) -> tuple[list[int], list[int]]:
    """Token ids and labels for one chat pair; labels are -100 outside the assistant's reply. ``ends=False``: the
    response is the start of a longer one (a generation limit cut it), so no end-of-turn token follows it."""
    user = [{"role": "user", "content": prompt}]
    prefix = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=False)
    full = tok.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=True,
                                   return_dict=False)
    if hasattr(prefix, "input_ids"):  # some versions return a BatchEncoding
        prefix, full = prefix["input_ids"], full["input_ids"]
    prefix, full = list(prefix), list(full)
    if full[: len(prefix)] != prefix:
        raise ValueError("chat template: the prompt-only rendering is not a prefix of the full rendering")
    # Drop whatever the template appends after the end-of-turn token (e.g. a trailing newline).
    end = tok.convert_tokens_to_ids("<|im_end|>")
    if end in full[len(prefix):]:
        full = full[: len(prefix) + full[len(prefix):].index(end) + (1 if ends else 0)]
    ids = full[:max_len]
    labels = [-100] * min(len(prefix), len(ids)) + ids[len(prefix):]
    return ids, labels


def _batches(encoded: list[tuple[list[int], list[int]]], cfg: SFTConfig, pad_id: int):
    """Infinite shuffled batches (epoch after epoch), right-padded."""
    rng = random.Random(cfg.seed)
    order: list[int] = []
    while True:
        if len(order) < cfg.batch_size:
            extra = list(range(len(encoded)))
            rng.shuffle(extra)
            order += extra
        idx, order = order[: cfg.batch_size], order[cfg.batch_size:]
        rows = [encoded[i] for i in idx]
        n = max(len(r[0]) for r in rows)
        ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
        lab = torch.full((len(rows), n), -100, dtype=torch.long)
        att = torch.zeros((len(rows), n), dtype=torch.long)
        for j, (a, b) in enumerate(rows):
            ids[j, : len(a)] = torch.tensor(a)
            lab[j, : len(b)] = torch.tensor(b)
            att[j, : len(a)] = 1
        yield ids, lab, att


def _assistant_loss(model, ids: torch.Tensor, att: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
    """Mean next-token CE over the labelled (assistant) positions, as ``model(labels=...)`` computes it.

    Why not ``model(labels=...)``: that projects every position onto the 49k-token vocabulary, while only the
    assistant tokens (a few per task example) carry loss; the LM head plus softmax is ~20-30% of a step on CPU.
    Works for plain and PEFT-wrapped Llama models (LoRA layers are injected in place)."""
    logits, tgt, keep = _labelled_logits(model, ids, att, lab)
    return torch.nn.functional.cross_entropy(logits, tgt[keep])


def _labelled_logits(model, ids: torch.Tensor, att: torch.Tensor, lab: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-token logits (float32) at the labelled positions only, with the shifted labels and their mask: the LM
    head is the costly part, so both losses project only what carries loss."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = core.model(input_ids=ids, attention_mask=att).last_hidden_state
    tgt = lab[:, 1:]
    keep = tgt != -100
    return core.lm_head(hidden[:, :-1][keep]).float(), tgt, keep


def _prefix_unlikelihood(model, ids: torch.Tensor, att: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-log(1 - P(labelled tokens))``: the unlikelihood of a whole labelled prefix (a refusal
    opener) as one event.

    Why the sequence and not each token: a refusal opener starts with "I", which many good answers start with too;
    only the joint probability of "I'm sorry, but I can't" says the model is about to refuse. The term is ~P itself
    when P is small (no pull on prompts the model already answers) and grows without bound as P -> 1."""
    logits, tgt, keep = _labelled_logits(model, ids, att, lab)
    logp = torch.log_softmax(logits, dim=-1)
    tok_lp = logp.gather(-1, tgt[keep].unsqueeze(-1)).squeeze(-1)
    rows = keep.nonzero()[:, 0]
    seq_lp = torch.zeros(ids.shape[0], dtype=tok_lp.dtype).index_add(0, rows, tok_lp)
    seq_lp = seq_lp.clamp(max=-1e-6)  # log P(prefix) < 0, so log1p(-P) stays finite
    return -torch.log1p(-torch.exp(seq_lp)).mean()


def encode_prefix(tok, prompt: str, response: str, n_tokens: int) -> tuple[list[int], list[int]]:
    """:func:`encode_pair` cut to the prompt plus the first ``n_tokens`` tokens of ``response`` (labelled)."""
    ids, labels = encode_pair(tok, prompt, response, max_len=10_000)
    first = next(i for i, x in enumerate(labels) if x != -100)
    return ids[: first + n_tokens], labels[: first + n_tokens]


@dataclass(frozen=True)
class Unlikelihood:
    """A second term of the SFT loss: make a refusal opener unlikely on prompts that must be answered.

    Why: SFT on a long answer spends almost all of its gradient on the answer's content; the decision to refuse
    is the first few tokens, and there the refusal pairs (same openers, hundreds of times) win for any prompt that
    shares their words ("kill", "destroy"). Pairing the same openers as *negatives* with harmless prompts that use
    those words makes the words alone useless as a cue. ``pairs``: ``(prompt, refusal)``; each step adds
    ``weight`` x the mean unlikelihood of the first ``tokens`` tokens over a batch of them (own shuffled order)."""

    pairs: tuple[tuple[str, str], ...]
    weight: float
    tokens: int


class TrainingPaused(RuntimeError):
    """Training stopped at its time budget after saving a checkpoint; rerun the same command to resume."""


def _save_ckpt(ckpt: Path, model, opt, sched, step: int, losses: list[float]) -> None:
    """Trainable weights, optimiser and schedule after ``step`` steps, written to a temp file and renamed (a
    checkpoint is never half-written)."""
    ckpt.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "losses": losses, "opt": opt.state_dict(), "sched": sched.state_dict(),
             "params": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
             "torch_rng": torch.get_rng_state()}
    tmp = ckpt / "state.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(ckpt / "state.pt")


def _load_ckpt(ckpt: Path, model, opt, sched) -> tuple[int, list[float]]:
    path = ckpt / "state.pt"
    if not path.is_file():
        return 0, []
    state = torch.load(path, weights_only=False)
    named = dict(model.named_parameters())
    with torch.no_grad():
        for n, v in state["params"].items():
            named[n].copy_(v)
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), list(state["losses"])


def _loop(model, params, pairs: list[tuple], tok, cfg: SFTConfig, log, ckpt: Path | None = None,
          max_seconds: float | None = None, unlikely: Unlikelihood | None = None) -> list[float]:
    """The SFT loop. ``ckpt``: a folder for a resumable run (the state after every ``cfg.ckpt_every`` steps and at
    the time budget; a run that finds one continues from it with the same batches it would have seen);
    ``max_seconds``: stop after about this long, save, and raise :class:`TrainingPaused` (a chunk of a run that
    must fit a shared machine's time slots); ``unlikely``: the :class:`Unlikelihood` term (off when None)."""
    torch.manual_seed(cfg.seed)
    # a pair is (prompt, response) or (prompt, response, ends): ends=False for a response cut by a length limit
    encoded = [encode_pair(tok, *pair[:2], cfg.max_len, ends=pair[2] if len(pair) > 2 else True) for pair in pairs]
    encoded = [e for e in encoded if any(x != -100 for x in e[1])]
    if not encoded:
        raise ValueError("no training pair has assistant tokens within max_len")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup)) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batches = _batches(encoded, cfg, pad)
    neg_batches = None
    if unlikely is not None and unlikely.weight > 0 and unlikely.pairs:
        neg = [encode_prefix(tok, p, r, unlikely.tokens) for p, r in unlikely.pairs]
        neg_batches = _batches(neg, SFTConfig(**{**cfg.to_dict(), "seed": cfg.seed + 1}), pad)
    start, losses = (_load_ckpt(ckpt, model, opt, sched) if ckpt is not None else (0, []))
    if start:
        log(f"resuming at step {start}/{cfg.steps} from {ckpt}")
        for _ in range(start):  # the batch order is a function of the seed: skip what was trained on
            next(batches)
            if neg_batches is not None:
                next(neg_batches)
    model.train()
    t0 = time.time()
    for step in range(start, cfg.steps):
        ids, lab, att = next(batches)
        loss = _assistant_loss(model, ids, att, lab)
        if neg_batches is not None:
            n_ids, n_lab, n_att = next(neg_batches)
            loss = loss + unlikely.weight * _prefix_unlikelihood(model, n_ids, n_att, n_lab)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % 10 == 0 or step == cfg.steps - 1:
            log(f"step {step + 1}/{cfg.steps} loss {losses[-1]:.4f} ({time.time() - t0:.0f}s)")
        done = step + 1
        if ckpt is not None and done < cfg.steps:
            out_of_time = max_seconds is not None and time.time() - t0 >= max_seconds
            if out_of_time or done % cfg.ckpt_every == 0:
                _save_ckpt(ckpt, model, opt, sched, done, losses)
            if out_of_time:
                log(f"time budget reached after step {done}/{cfg.steps} ({time.time() - t0:.0f}s); saved {ckpt}")
                raise TrainingPaused(f"paused at step {done}/{cfg.steps}; rerun the same command to resume")
    model.eval()
    return losses


def train_lora(base: Path, pairs: list[tuple], out: Path, cfg: SFTConfig, log=print,
               dtype: torch.dtype = torch.bfloat16, ckpt: Path | None = None,
               max_seconds: float | None = None, unlikely: Unlikelihood | None = None) -> dict:
    """Train a LoRA on ``base`` and save it as a PEFT folder in ``out`` (weights cast to ``dtype``);
    ``ckpt``/``max_seconds``: a resumable run in time-boxed chunks (see :func:`_loop`)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lcfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules,
                      bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(cfg.seed)
    model = get_peft_model(model, lcfg)
    params = [p for p in model.parameters() if p.requires_grad]
    losses = _loop(model, params, pairs, tok, cfg, log, ckpt=ckpt, max_seconds=max_seconds, unlikely=unlikely)
    model.save_pretrained(out, safe_serialization=True)
    _cast_safetensors(out / "adapter_model.safetensors", dtype)
    # PEFT writes the absolute base path; keep the config portable.
    cfg_path = out / "adapter_config.json"
    c = json.loads(cfg_path.read_text())
    c["base_model_name_or_path"] = "smollm2-135m-instruct"
    cfg_path.write_text(json.dumps(c, indent=2) + "\n")
    return {"losses": losses, "n_pairs": len(pairs), "config": cfg.to_dict()}


def train_full(base: Path, pairs: list[tuple[str, str]], out: Path, cfg: SFTConfig, log=print,
               save_dtype: torch.dtype = torch.float32) -> dict:
    """Full-parameter SFT of ``base``; saves an HF checkpoint (fp32 by default) with the base's tokenizer files.

    Why fp32: a short fine-tune at lr 2e-5 moves most weights by less than one bf16 step, so a bf16 D keeps
    only ~1% of the changed entries (checked on a 2-step run) and A - D becomes a sparse, degenerate matrix
    whose SVD does not converge. vLLM still serves D in bf16 (``--dtype bfloat16``)."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]
    losses = _loop(model, params, pairs, tok, cfg, log)
    model.to(save_dtype).save_pretrained(out, safe_serialization=True)
    copy_tokenizer(base, out)
    return {"losses": losses, "n_pairs": len(pairs), "config": cfg.to_dict()}


def copy_tokenizer(src: Path, dst: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                 "generation_config.json"):
        if (src / name).is_file() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)


def _cast_safetensors(path: Path, dtype: torch.dtype) -> None:
    from safetensors.torch import load_file, save_file

    tensors = {k: v.to(dtype).contiguous() for k, v in load_file(path).items()}
    save_file(tensors, path, metadata={"format": "pt"})
