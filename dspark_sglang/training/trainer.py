"""Resumable drafter trainer (CPU or CUDA): AdamW, linear warmup + cosine, grad clip, periodic
checkpoints of model + optimizer + scheduler + step + RNG, a JSONL loss log and tqdm progress.

The target is frozen and only its `embed_tokens` / `lm_head` are used (features come from the cache).
A resumed run continues bit-identically: every random draw (sequence batches, anchors) comes from one
`torch.Generator` whose state is checkpointed, and the loss log is cut back to the checkpoint's step.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dspark_sglang.drafter import DrafterConfig, DSparkDrafter, save_drafter
from dspark_sglang.training.target_fit import check_mask_token_unused
from dspark_sglang.training.features import FeatureCache
from dspark_sglang.training.forward import sample_anchors, training_block_hidden
from dspark_sglang.training.losses import LossWeights, dspark_loss, teacher_forced_logits

CKPT_FILE, LOG_FILE = "trainer_state.pt", "loss_log.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    drafter: dict[str, Any]
    steps: int = 400
    batch_seqs: int = 4
    anchors_per_seq: int = 32
    lr: float = 1.5e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.04
    clip: float = 1.0
    ce_weight: float = 0.1
    l1_weight: float = 0.9
    bce_weight: float = 1.0
    decay: float = 4.0
    confidence_detached: bool = False
    """Stop the confidence BCE's gradient at h_k (`Preset.confidence_detached`)."""
    save_every: int = 25
    holdout: int = 24
    dtype: str = "bfloat16"
    markov_rows: str = "full"
    """How `export` stores the Markov head (`Preset.markov_rows`)."""
    draft_vocab_size: int | None = None
    """Export a draft vocabulary of this many ids (`Preset.draft_vocab_size`, `prune_draft_vocab`)."""
    seed: int = 0
    device: str = "cpu"
    vocab_subset: int | None = None
    """CPU-budget approximation: softmaxes over the most frequent data tokens only (None = full vocab)."""
    time_budget_s: float | None = None
    """Stop early (checkpoint + export) after this many seconds of this process."""
    long_seq_tokens: int = 1024
    """A drawn sequence longer than this runs as its own micro-batch (gradients accumulated), so a 4k-token
    repository prompt does not pad the short sequences of its batch to its length."""
    long_seq_share: float | None = None
    """Draw each sequence from the long ones (> long_seq_tokens) with this probability; None = uniform
    over all training sequences."""

    @classmethod
    def from_preset(cls, preset, **kw) -> "TrainConfig":
        fields = {k: v for k, v in asdict(preset).items() if k in cls.__dataclass_fields__}
        return cls(**fields, **kw)

    @property
    def loss_weights(self) -> LossWeights:
        return LossWeights(self.ce_weight, self.l1_weight, self.bce_weight, self.decay)


def drafter_config_for_target(target_config: dict[str, Any], drafter: dict[str, Any]) -> DrafterConfig:
    """The target's HF config + DSpark keys (hidden size, vocab, rope... come from the target)."""
    cfg = dict(target_config)
    cfg.update(architectures=["Qwen3DSparkModel"], num_target_layers=target_config["num_hidden_layers"],
               tie_word_embeddings=False, **drafter)
    for key in ("torch_dtype", "dtype", "transformers_version", "_name_or_path"):
        cfg.pop(key, None)
    return DrafterConfig.from_dict(cfg)


def init_drafter(config: DrafterConfig, embed_tokens, lm_head, seed: int) -> DSparkDrafter:
    """Fresh drafter; the Markov output W2 starts at zero (no bias: the head starts as plain DFlash)."""
    torch.manual_seed(seed)
    drafter = DSparkDrafter(config, embed_tokens, lm_head)
    with torch.no_grad():
        if config.markov_rank > 0:
            drafter.markov_head.markov_w2.weight.zero_()
            drafter.markov_head.markov_w1.weight.normal_(0, 0.02 * math.sqrt(config.hidden_size / config.markov_rank))
        for name, p in drafter.named_parameters():
            if p.dim() == 2 and "markov" not in name:
                torch.nn.init.normal_(p, 0.0, 0.02)
    return drafter


def shared_module_on(module: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    """`module` (the target's embed_tokens or lm_head, which the drafter references but does not own, so
    `drafter.to(device)` leaves it where it is) on `device`: itself if it is there, else a frozen copy,
    so the caller's target model stays whole on its own device."""
    if module.weight.device == torch.empty(0, device=device).device:
        return module
    return copy.deepcopy(module).to(device).requires_grad_(False)


def lr_lambda(total: int, warmup_frac: float):
    warmup = max(1, round(total * warmup_frac))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return f


def make_batch(cache: FeatureCache, seq_ids: list[int], device: str) -> dict[str, torch.Tensor]:
    """Pad sequences of the cache: ids [B,T], ctx [B,T,nH] f32, final [B,T,H] f32, loss_mask [B,T], lengths [B]."""
    seqs = [cache.sequence(i) for i in seq_ids]
    width = max(s[0].numel() for s in seqs)
    num = len(seqs)
    ids = torch.zeros(num, width, dtype=torch.int64)
    ctx = torch.zeros(num, width, seqs[0][1].shape[1])
    final = torch.zeros(num, width, seqs[0][2].shape[1])
    loss_mask = torch.zeros(num, width, dtype=torch.bool)
    lengths = torch.zeros(num, dtype=torch.int64)
    for b, (i, c, f, prompt_len) in enumerate(seqs):
        n = i.numel()
        ids[b, :n], ctx[b, :n], final[b, :n], lengths[b] = i, c.float(), f.float(), n
        loss_mask[b, prompt_len:n] = True
    return {k: v.to(device) for k, v in dict(ids=ids, ctx=ctx, final=final, loss_mask=loss_mask, lengths=lengths).items()}


def block_targets(batch: dict[str, torch.Tensor], anchors: torch.Tensor, valid_blocks: torch.Tensor, gamma: int):
    """For the valid blocks (flattened, M of them): labels [M,γ], prev ids [M,γ], valid slots [M,γ],
    final-hidden rows [M,γ,H] whose lm_head gives the target's distribution for each label."""
    b_idx = torch.arange(anchors.shape[0], device=anchors.device).unsqueeze(1).expand_as(anchors)[valid_blocks]
    p = anchors[valid_blocks]                                                         # [M]
    k = torch.arange(gamma, device=p.device)
    width = batch["ids"].shape[1]
    lab_pos = p.unsqueeze(1) + k + 1                                                  # [M, γ]
    slot_valid = lab_pos < batch["lengths"][b_idx].unsqueeze(1)
    labels = batch["ids"][b_idx.unsqueeze(1), lab_pos.clamp(max=width - 1)]
    prev = batch["ids"][b_idx.unsqueeze(1), (p.unsqueeze(1) + k).clamp(max=width - 1)]  # x_{k-1}: anchor, p+1, ...
    final = batch["final"][b_idx.unsqueeze(1), (p.unsqueeze(1) + k).clamp(max=width - 1)]  # [M, γ, H]
    return labels, prev, slot_valid, final


def vocab_subset(cache: FeatureCache, size: int) -> torch.Tensor:
    """The `size` most frequent token ids of the cache (every token of the data when size >= #distinct),
    sorted: the softmax support used when `TrainConfig.vocab_subset` is set."""
    counts = torch.bincount(torch.from_numpy(cache.tokens[:].astype("int64")))
    distinct = int((counts > 0).sum())
    return torch.topk(counts.float(), min(size, counts.numel()) if size < distinct else distinct).indices.sort().values


def answer_token_counts(cache: FeatureCache, vocab_size: int) -> torch.Tensor:
    """[vocab_size] int64: how often each id is an answer token (a drafter label) in the cache."""
    import numpy as np
    answers = [cache.tokens[e.offset + e.prompt_len: e.offset + e.length] for e in cache.entries]
    flat = np.concatenate(answers).astype("int64") if answers else np.zeros(0, dtype="int64")
    return torch.bincount(torch.from_numpy(flat), minlength=vocab_size)


def prune_draft_vocab(vocab_ids: torch.Tensor, counts: torch.Tensor, size: int) -> torch.Tensor:
    """The `size` ids of `vocab_ids` [V'] with the highest `counts` (ties: the lower id), sorted: a narrower
    draft vocabulary for serving (its lm_head is |draft vocabulary| wide) than the training softmax support."""
    if not 0 < size <= vocab_ids.numel():
        raise ValueError(f"draft_vocab_size={size} must be in 1..{vocab_ids.numel()} (the training vocabulary) "
                         "-> fix: --draft-vocab-size")
    ids = vocab_ids.sort().values.cpu()
    order = torch.sort(-counts[ids], stable=True).indices                   # stable: equal counts keep id order
    return ids[order[:size]].sort().values


def train_step(drafter: DSparkDrafter, batch: dict[str, torch.Tensor], cfg: TrainConfig,
               gen: torch.Generator, vocab_ids: torch.Tensor | None = None,
               vocab_map: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one batch (anchors drawn from `gen`). With `vocab_ids` ([V'], and `vocab_map` [V] -> index
    in it, -1 outside) both softmaxes are taken over that subset and labels outside it are masked."""
    anchors, valid_blocks = sample_anchors(batch["loss_mask"], cfg.anchors_per_seq, gen)
    h = training_block_hidden(drafter, batch["ctx"], batch["ids"], anchors, valid_blocks)  # [B, N, γ, H]
    labels, prev, slot_valid, final = block_targets(batch, anchors, valid_blocks, drafter.config.block_size)
    h = h[valid_blocks]                                                               # [M, γ, H]
    logits, conf = teacher_forced_logits(drafter, h, prev, vocab_ids, cfg.confidence_detached)
    with torch.no_grad():
        weight = drafter.lm_head.weight if vocab_ids is None else drafter.lm_head.weight[vocab_ids]
        target_logits = torch.nn.functional.linear(final.to(weight.dtype), weight).float()
    if vocab_ids is not None:
        labels = vocab_map[labels]
        slot_valid = slot_valid & (labels >= 0)
        slot_valid = slot_valid.int().cumprod(-1).bool()                              # keep a valid PREFIX
    return dspark_loss(logits, target_logits, labels, slot_valid, conf, cfg.loss_weights)


def draw_sequences(train_ids: list[int], long_ids: list[int], cfg: TrainConfig, gen: torch.Generator) -> list[int]:
    """`cfg.batch_seqs` cache indices: uniform over `train_ids`, or with `cfg.long_seq_share` each one
    from `long_ids` with that probability (else from the others)."""
    if cfg.long_seq_share is None:
        return [train_ids[i] for i in torch.randint(len(train_ids), (cfg.batch_seqs,), generator=gen).tolist()]
    long_set = set(long_ids)
    short_ids = [i for i in train_ids if i not in long_set] or long_ids
    out = []
    for u in torch.rand(cfg.batch_seqs, generator=gen).tolist():
        pool = long_ids if u < cfg.long_seq_share else short_ids
        out.append(pool[int(torch.randint(len(pool), (1,), generator=gen))])
    return out


def micro_batches(lengths: list[int], long_seq_tokens: int) -> list[list[int]]:
    """Indices into a drawn batch: the sequences of at most `long_seq_tokens` together (drawn order), then
    each longer one alone. One group (the old single batch) when none is long.

    Example:
        >>> micro_batches([300, 4000, 500], 1024)
        [[0, 2], [1]]
    """
    short = [i for i, n in enumerate(lengths) if n <= long_seq_tokens]
    return ([short] if short else []) + [[i] for i, n in enumerate(lengths) if n > long_seq_tokens]


def load_initial_weights(drafter: DSparkDrafter, path: str | Path) -> None:
    """Start from an exported drafter (`model.safetensors` of the same architecture; the target's
    embed_tokens / lm_head are not in it and stay the target's)."""
    from safetensors.torch import load_file
    weights = load_file(str(Path(path) / "model.safetensors"))
    own = drafter.state_dict()
    missing = sorted(k for k in own if k not in weights and not k.startswith(("embed_tokens.", "lm_head.")))
    unexpected = sorted(k for k in weights if k not in own)
    bad = [k for k in weights if k in own and weights[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise ValueError(f"init_from {path}: the weights do not match this drafter config (missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}, other shape {bad[:4]}) -> fix: start from a drafter "
                         "trained with the same preset / ablation")
    with torch.no_grad():
        for k, v in weights.items():
            own[k].copy_(v.to(own[k].dtype))


def _save_state(path: Path, drafter, opt, sched, step: int, gen: torch.Generator,
                vocab_ids: torch.Tensor | None) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": drafter.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "step": step, "gen_state": gen.get_state(), "torch_rng": torch.get_rng_state(),
                "vocab_ids": None if vocab_ids is None else vocab_ids.cpu()}, tmp)
    os.replace(tmp, path)                                         # atomic: a kill never leaves a torn state


def _cut_log(path: Path, step: int) -> None:
    if not path.is_file():
        return
    keep = []
    with path.open() as f:
        for line in f:
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (json.JSONDecodeError, KeyError):
                break
    path.write_text("".join(keep))


def export(drafter: DSparkDrafter, out_dir: str | Path, dtype: str, vocab_ids: torch.Tensor | None = None,
           markov_rows: str = "full") -> None:
    """Save the drafter in DeepSpec format, weights cast to `dtype`, WITHOUT the target's embeddings; with
    `vocab_ids` (the training softmax support) also its `draft_vocab.json`, so it drafts only from them, and
    with markov_rows="draft_vocab" the Markov rows of those ids only (`save_drafter`)."""
    cfg = drafter.config
    copy = DSparkDrafter(cfg, drafter.embed_tokens, drafter.lm_head)
    copy.load_state_dict(drafter.state_dict())
    copy.to(getattr(torch, dtype))
    if vocab_ids is None and markov_rows != "full":
        raise ValueError("export: markov_rows='draft_vocab' needs a vocabulary subset (TrainConfig.vocab_subset)")
    if vocab_ids is not None:
        copy.set_draft_vocab(vocab_ids)                 # save_drafter stores the rows in draft_vocab.json's sorted order
    save_drafter(copy, str(out_dir), include_target_weights=False, markov_rows=markov_rows)   # + draft_vocab.json


def train(target_model, cache_dir: str | Path, run_dir: str | Path, cfg: TrainConfig,
          out_dir: str | Path | None = None, max_steps_this_call: int | None = None,
          progress: bool = True, init_from: str | Path | None = None) -> DSparkDrafter:
    """Train (or resume) a drafter on a feature cache.

    Args:
        target_model:        HF causal LM (its embed_tokens / lm_head are shared and frozen).
        cache_dir:           `features.build_feature_cache` output.
        run_dir:             checkpoints + loss log (resumes from `trainer_state.pt` if present).
        cfg:                 the recipe.
        out_dir:             export the final drafter here (DeepSpec format, cfg.dtype).
        max_steps_this_call: stop after this many steps of THIS call (tests simulate a kill with it).
        init_from:           an exported drafter to start from instead of a fresh init (fine-tuning; a run
                             with a checkpoint resumes from that instead).
    Returns:
        the drafter (float32, train mode off).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = cfg.device
    cache = FeatureCache(cache_dir)
    train_ids = list(range(max(1, len(cache) - cfg.holdout)))
    dcfg = drafter_config_for_target(target_model.config.to_dict(), cfg.drafter)
    if list(dcfg.target_layer_ids) != list(cache.meta["target_layer_ids"]):
        raise ValueError(f"the feature cache {cache_dir} holds target layers {cache.meta['target_layer_ids']} but the "
                         f"drafter reads {list(dcfg.target_layer_ids)} -> fix: pass the same --target-layer-ids to "
                         "`features` and `train` (or rebuild the cache in a new --work-dir)")
    check_mask_token_unused(cache.tokens, dcfg.mask_token_id)
    drafter = init_drafter(dcfg, shared_module_on(target_model.get_input_embeddings(), device),
                           shared_module_on(target_model.get_output_embeddings(), device), cfg.seed)
    if init_from is not None:
        load_initial_weights(drafter, init_from)
    drafter.to(device).train()
    opt = torch.optim.AdamW(drafter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.steps, cfg.warmup_frac))
    gen = torch.Generator().manual_seed(cfg.seed)
    ckpt, log_path = run_dir / CKPT_FILE, run_dir / LOG_FILE
    state = torch.load(ckpt, map_location=device, weights_only=False) if ckpt.is_file() else None
    vocab_ids = vocab_map = None
    if cfg.vocab_subset:                 # a resumed run keeps the support it started with, even if the cache grew
        pinned = None if state is None else state.get("vocab_ids")
        vocab_ids = (pinned if pinned is not None else vocab_subset(cache, cfg.vocab_subset)).to(device)
        vocab_map = torch.full((dcfg.vocab_size,), -1, dtype=torch.int64, device=device)
        vocab_map[vocab_ids] = torch.arange(vocab_ids.numel(), device=device)
    export_vocab = vocab_ids
    if cfg.draft_vocab_size is not None:              # checked before training; the export drafts from these ids
        candidates = vocab_ids if vocab_ids is not None else torch.arange(dcfg.vocab_size)
        export_vocab = prune_draft_vocab(candidates, answer_token_counts(cache, dcfg.vocab_size), cfg.draft_vocab_size)
    long_ids = [i for i in train_ids if cache.length(i) > cfg.long_seq_tokens]
    if cfg.long_seq_share is not None and not long_ids:
        raise ValueError(f"long_seq_share={cfg.long_seq_share} but no training sequence is longer than "
                         f"long_seq_tokens={cfg.long_seq_tokens} -> fix: run the repo stage or unset long_seq_share")
    step = 0
    if state is not None:
        drafter.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["gen_state"].cpu())                 # map_location moved it to the device too
        torch.set_rng_state(state["torch_rng"].cpu())
        step = state["step"]
    _cut_log(log_path, step)
    with open(run_dir / "train_config.json", "w") as f:
        json.dump(asdict(cfg) | {"drafter_config": dcfg.to_dict(), "num_train_sequences": len(train_ids),
                                 "init_from": None if init_from is None else str(init_from),
                                 "feature_cache": str(cache_dir),
                                 "vocab_subset_size": None if vocab_ids is None else int(vocab_ids.numel())},
                  f, indent=2, default=str)
    start, done_here = time.perf_counter(), 0
    bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", disable=not progress)
    with log_path.open("a") as log:
        while step < cfg.steps:
            seq_ids = draw_sequences(train_ids, long_ids, cfg, gen)
            opt.zero_grad(set_to_none=True)
            stats = {}
            for group in micro_batches([cache.length(i) for i in seq_ids], cfg.long_seq_tokens):
                batch = make_batch(cache, [seq_ids[i] for i in group], device)
                loss, group_stats = train_step(drafter, batch, cfg, gen, vocab_ids, vocab_map)
                share = len(group) / len(seq_ids)                   # the mean over sequences, as one batch
                (loss * share).backward()
                for k, v in group_stats.items():
                    stats[k] = stats.get(k, 0.0) + share * v
            grad_norm = torch.nn.utils.clip_grad_norm_(drafter.parameters(), cfg.clip)
            opt.step()
            sched.step()
            step += 1
            done_here += 1
            stats.update(step=step, lr=sched.get_last_lr()[0], grad_norm=float(grad_norm),
                         elapsed_s=round(time.perf_counter() - start, 2))
            log.write(json.dumps(stats) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['acc']:.3f}")
            bar.update(1)
            out_of_time = cfg.time_budget_s is not None and time.perf_counter() - start > cfg.time_budget_s
            stop_here = max_steps_this_call is not None and done_here >= max_steps_this_call
            if step % cfg.save_every == 0 or step == cfg.steps or out_of_time or stop_here:
                _save_state(ckpt, drafter, opt, sched, step, gen, vocab_ids)
            if out_of_time or stop_here:
                break
    bar.close()
    drafter.eval()
    if out_dir is not None and (step >= cfg.steps or cfg.time_budget_s is not None):
        export(drafter, out_dir, cfg.dtype, export_vocab, cfg.markov_rows)
    return drafter
