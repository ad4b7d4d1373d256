"""`HFTarget`: a Hugging Face causal LM (Llama / Qwen3 families) used as the verification target.

It runs the forward passes speculative decoding needs and returns, with the logits, the features the
DSpark drafter consumes: the raw residual-stream outputs of `target_layer_ids`, i.e. HF
`hidden_states[l + 1]` for each l, concatenated in that order ([T, n·H]).

Two KV-cache holders sit on top of it:
- `TargetSequence` (batch 1, the paper's protocol): one `DynamicCache`; `prefill` → `verify` → `commit`
  (which crops the cache to the accepted prefix with `DynamicCache.crop`).
- `TargetBatch` (batched mode, `target/batch.py`): ragged requests in one padded forward.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModelForCausalLM, DynamicCache, PreTrainedModel

SUPPORTED_MODEL_TYPES = ("llama", "qwen3", "qwen2", "mistral")


@dataclass
class TargetOutput:
    """What one target forward returns for one request."""

    logits: torch.Tensor
    """[W, V] float32 next-token logits at each of the W input positions."""
    hidden: torch.Tensor
    """[W, n·H] features of `target_layer_ids` at each input position (model dtype)."""


class HFTarget:
    """A frozen HF causal LM plus the layer ids whose outputs feed the drafter.

    Args:
        model:            an HF `*ForCausalLM` (Llama, Qwen2/3, Mistral).
        target_layer_ids: decoder layers whose outputs are captured, each in [0, num_layers-2].

    Example:
        >>> target = HFTarget.from_pretrained(smollm2_path(), [1, 15, 28])  # doctest: +SKIP
        >>> seq = target.new_sequence()  # doctest: +SKIP
        >>> out = seq.prefill(torch.tensor([1, 2, 3]))   # out.logits [3, V], out.hidden [3, 3·576]  # doctest: +SKIP
    """

    def __init__(self, model: PreTrainedModel, target_layer_ids: Sequence[int]) -> None:
        cfg = model.config
        if cfg.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"target model_type {cfg.model_type!r} is not supported; expected one of "
                             f"{SUPPORTED_MODEL_TYPES}")
        num_layers = cfg.num_hidden_layers
        bad = [i for i in target_layer_ids if not 0 <= i <= num_layers - 2]
        if not target_layer_ids or bad:
            raise ValueError(f"target_layer_ids must be a non-empty list in [0, {num_layers - 2}] for this "
                             f"{num_layers}-layer target (never the final layer); got {list(target_layer_ids)}")
        self.model = model.eval().requires_grad_(False)
        self.target_layer_ids = tuple(int(i) for i in target_layer_ids)

    @classmethod
    def from_pretrained(cls, path: str | Path, target_layer_ids: Sequence[int], dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> "HFTarget":
        """Load an HF folder (e.g. `dspark_sglang.models.smollm2_path()`) in `dtype` on `device`."""
        if not Path(path).is_dir():
            raise FileNotFoundError(f"target model folder {path} does not exist")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        return cls(model, target_layer_ids)

    # ------------------------------------------------------------------ properties
    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    @property
    def num_features(self) -> int:
        """n·H: width of the captured features."""
        return len(self.target_layer_ids) * self.model.config.hidden_size

    @property
    def embed_tokens(self) -> torch.nn.Module:
        return self.model.get_input_embeddings()

    @property
    def lm_head(self) -> torch.nn.Module:
        return self.model.get_output_embeddings()

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """EOS ids from the generation config (falls back to the model config)."""
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self.model.config.eos_token_id
        if eos is None:
            return ()
        return tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, past: DynamicCache,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward over new tokens, extending `past` in place.

        Args:
            input_ids:      [R, W] int64.
            position_ids:   [R, W] int64 absolute positions (RoPE).
            past:           the cache holding the R requests' previous tokens; W entries are appended.
            attention_mask: [R, past_len + W] 0/1 over cache entries + new tokens, or None (no padding).

        Returns:
            logits [R, W, V] float32 and hidden [R, W, n·H] (model dtype).
        """
        out = self.model(input_ids=input_ids, position_ids=position_ids, past_key_values=past,
                         attention_mask=attention_mask, use_cache=True, output_hidden_states=True)
        hidden = torch.cat([out.hidden_states[l + 1] for l in self.target_layer_ids], dim=-1)  # [R, W, n·H]
        return out.logits.float(), hidden

    def new_sequence(self) -> "TargetSequence":
        """A batch-1 request with an empty KV cache."""
        return TargetSequence(self)

    def new_batch(self, num_reqs: int):
        """`num_reqs` request slots verified together (`target.batch.TargetBatch`)."""
        from dspark_sglang.target.batch import TargetBatch  # batch.py imports this module
        return TargetBatch(self, num_reqs)


class TargetSequence:
    """One request's target KV cache (batch 1): prefill, verify windows, keep the accepted prefix.

    Invariant: the cache holds exactly `length` committed tokens at positions 0..length-1, except between
    `verify` and `commit`, when it also holds the verified window.
    """

    def __init__(self, target: HFTarget) -> None:
        self.target = target
        self.cache = DynamicCache(config=target.config)
        self.length = 0
        """Committed tokens in the cache (host int)."""

    def _run(self, ids: torch.Tensor) -> TargetOutput:
        ids = ids.to(self.target.device).view(1, -1)                                        # [1, W]
        positions = torch.arange(self.length, self.length + ids.shape[1], device=ids.device).view(1, -1)
        logits, hidden = self.target.forward(ids, positions, self.cache)
        return TargetOutput(logits=logits[0], hidden=hidden[0])

    def prefill(self, prompt_ids: torch.Tensor) -> TargetOutput:
        """Run the prompt [T] int64 and commit it.

        Returns:
            logits [T, V] (the last row gives the first generated token) and hidden [T, n·H] for ALL prompt
            tokens (to seed the drafter's context).
        """
        if self.length != 0:
            raise RuntimeError("prefill on a sequence that already holds tokens")
        out = self._run(prompt_ids)
        self.length = prompt_ids.numel()
        return out

    def verify(self, window_ids: torch.Tensor) -> TargetOutput:
        """Run the window [anchor, x_1..x_ℓ] ([ℓ+1] int64) at positions length..length+ℓ.

        Returns:
            logits [ℓ+1, V] (row j: the target's distribution for the token after anchor + j drafts) and
            hidden [ℓ+1, n·H]. Call `commit` next.
        """
        return self._run(window_ids)

    def commit(self, num_tokens: int) -> None:
        """Keep the first `num_tokens` tokens of the last window (the anchor + accepted drafts) and drop
        the rest from the cache (`DynamicCache.crop`)."""
        self.length += num_tokens
        num_dropped = self.cache.get_seq_length() - self.length
        if num_dropped > 0:                      # crop(-n) drops the last n entries (crop(0) would empty it)
            self.cache.crop(-num_dropped)
