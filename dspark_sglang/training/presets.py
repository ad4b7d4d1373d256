"""Named training recipes. `smollm2-default` is the shipped SmolLM2-135M-Instruct drafter."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Preset:
    """Everything a reproducible run fixes (CLI flags override single fields)."""

    drafter: dict[str, Any]
    """DrafterConfig fields on top of the target's config (hidden size etc. come from the target)."""
    num_code: int = 600
    num_chat: int = 0
    """Template chat prompts (writing / explanation / advice), for chat-domain coverage."""
    max_prompts: int | None = None
    num_code_references: int = 0
    num_repo_prompts: int = 0
    """Long-context repository prompts (`training.repository_prompts`), answered into their own shard."""
    repo_batch_size: int = 16
    """Repository prompts in flight while generating (each carries 2k-5k prompt tokens)."""
    """Off-policy "complete this function" records answered with the real stdlib source (prefill only)."""
    gen_batch_size: int = 32
    max_new_tokens: int = 160
    gen_dtype: str = "float32"
    gen_backend: str = "hf"
    """hf: batched HF generate in-process; sglang: a local SGLang server (continuous batching; much faster on CPU)."""
    """Dtype of the target while it regenerates answers (sampled at T=0.7; bf16 is ~1.5x faster on CPU)."""
    feature_batch_tokens: int = 4096
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
    """Slot weights exp(-k / decay)."""
    confidence_detached: bool = False
    """The confidence BCE trains the confidence head and markov_w1 only: its gradient stops at the block
    hidden states h_k, so the draft backbone learns from the CE / L1 terms alone."""
    vocab_subset: int | None = None
    """Softmax over the most frequent data tokens only (CPU budget); None = full vocabulary."""
    save_every: int = 25
    holdout: int = 24
    """Last sequences of the cache, kept out of training (STS fitting / validation)."""
    dtype: str = "bfloat16"
    """Dtype of the SHIPPED weights (training runs in float32)."""
    markov_rows: str = "full"
    """How the export stores the Markov head: "full" (DeepSpec) or "draft_vocab" (rows of the training vocabulary
    subset only, `save_drafter(markov_rows=...)`)."""
    draft_vocab_size: int | None = None
    """Export only this many ids of the training vocabulary as the draft vocabulary, the most frequent answer
    tokens of the feature cache (None = all of them): a narrower lm_head, a cheaper drafted step."""


SMOLLM2_DRAFTER = dict(
    num_hidden_layers=1, block_size=7, markov_rank=32, markov_head_type="vanilla",
    enable_confidence_head=True, confidence_head_with_markov=True,
    target_layer_ids=[1, 10, 19, 27],
    # <empty_output> (id 16): a special token of SmolLM2's Jupyter pre-training format; the chat
    # template never emits it and instruct answers never contain it, so it is free as the mask slot.
    mask_token_id=16,
)

PRESETS: dict[str, Preset] = {
    # Budgeted for a shared 2-core CPU host (see assets/drafters/smollm2-135m-dspark/README.md).
    "smollm2-default": Preset(drafter=SMOLLM2_DRAFTER, num_code=900, num_chat=400, max_prompts=800,
                              gen_batch_size=96, max_new_tokens=256, gen_dtype="bfloat16", gen_backend="sglang",
                              num_code_references=240, vocab_subset=16384, steps=2000, batch_seqs=8,
                              anchors_per_seq=24, lr=2e-3, save_every=25, holdout=16),
    "tiny-test": Preset(drafter=dict(SMOLLM2_DRAFTER, target_layer_ids=[0, 1], mask_token_id=0, markov_rank=4),
                        num_code=6, max_prompts=8, gen_batch_size=4, max_new_tokens=8, steps=6, batch_seqs=2,
                        anchors_per_seq=4, save_every=2, holdout=2),
}

# Twice the answers of smollm2-default, a third of them chat (mt-bench had 119 chat answers behind it).
PRESETS["smollm2-v2"] = replace(PRESETS["smollm2-default"], num_code=1200, num_chat=1000, max_prompts=2000)


def dflash_ablation(preset: Preset) -> Preset:
    """DFlash baseline (DSpark §4): same recipe, markov_rank 0, no confidence head, CE weight 1.0."""
    drafter = dict(preset.drafter, markov_rank=0, enable_confidence_head=False, confidence_head_with_markov=False)
    return replace(preset, drafter=drafter, ce_weight=1.0, bce_weight=0.0)
