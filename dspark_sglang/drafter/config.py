"""`DrafterConfig`: the DeepSpec `Qwen3DSparkModel` config.json keys, validated.

A DeepSpec drafter config.json is the target model's HF config plus the DSpark keys (`block_size`,
`target_layer_ids`, `mask_token_id`, `markov_*`, ...). `num_hidden_layers` is the DRAFTER's depth;
the target's depth is `num_target_layers`. Keys we do not model are kept in `extra` and written back.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

MARKOV_HEAD_TYPES = ("vanilla", "gated", "rnn")
MARKOV_ROWS = ("full", "draft_vocab")
ROPE_TYPES = ("default", "linear", "llama3")
DSPARK_ARCHITECTURE = "Qwen3DSparkModel"


@dataclass(frozen=True)
class DrafterConfig:
    """Shape and behaviour of a DSpark drafter (DSpark §3, DeepSpec `Qwen3DSparkModel`)."""

    hidden_size: int
    """H: the drafter's (and the target's) hidden size."""
    intermediate_size: int
    """SwiGLU inner size of every draft layer."""
    num_attention_heads: int
    """Query heads per draft layer."""
    num_key_value_heads: int
    """K/V heads per draft layer (GQA); divides num_attention_heads."""
    head_dim: int
    """Per-head size (even, for RoPE). Llama configs may omit it: hidden_size // num_attention_heads."""
    vocab_size: int
    """V: the target's vocabulary size."""
    num_target_layers: int
    """Number of decoder layers of the TARGET model."""
    target_layer_ids: tuple[int, ...]
    """Target layers whose outputs feed `fc`, in concatenation order; each in [0, num_target_layers-2]."""
    mask_token_id: int
    """Token id of the mask slots m in the block [x0, m, ..., m]; in [0, vocab_size)."""
    block_size: int = 7
    """γ: block slots = drafts per round (slot k predicts the token anchor+k+1)."""
    num_hidden_layers: int = 5
    """Number of DRAFT decoder layers."""
    markov_rank: int = 256
    """r: rank of the Markov sequential head; 0 = no head (plain DFlash)."""
    markov_head_type: str = "vanilla"
    """One of MARKOV_HEAD_TYPES."""
    markov_rows: str = "full"
    """How the checkpoint STORES markov_w1 / markov_w2: "full" = [vocab_size, r] (DeepSpec), "draft_vocab" =
    [V', r], row j for token draft_vocab.json[j] (a dspark-sglang extension, `save_drafter(markov_rows=...)`).
    A loaded drafter always holds full rows (`load_drafter` expands, other rows zero) and says "full"."""
    enable_confidence_head: bool = True
    """Whether the checkpoint has `confidence_head.proj`."""
    confidence_head_with_markov: bool = True
    """Confidence input is [h_k; W1[x_{k-1}]] (true) or h_k alone (false)."""
    rms_norm_eps: float = 1e-6
    """RMSNorm epsilon."""
    rope_theta: float = 1_000_000.0
    """RoPE base."""
    rope_scaling: dict[str, Any] | None = None
    """HF rope scaling dict (rope_type in ROPE_TYPES) or None."""
    max_position_embeddings: int = 40960
    """Maximum absolute position."""
    tie_word_embeddings: bool = False
    """Always false for DSpark drafters (embed/lm_head are the target's)."""
    architectures: tuple[str, ...] = (DSPARK_ARCHITECTURE,)
    """HF architectures list."""
    model_type: str = "qwen3"
    """The target's model_type, kept as is."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    """Every other key of config.json (the target's config), written back unchanged."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_layer_ids", tuple(int(i) for i in self.target_layer_ids))
        object.__setattr__(self, "architectures", tuple(self.architectures))

        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"DrafterConfig.{name} must be {allowed}; got {getattr(self, name)!r}")

        for name in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                     "head_dim", "vocab_size", "num_hidden_layers", "max_position_embeddings"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "an int >= 1")
        need(self.head_dim % 2 == 0, "head_dim", "even (RoPE rotates pairs)")
        need(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
             f"a divisor of num_attention_heads={self.num_attention_heads}")
        need(1 <= self.block_size <= 256, "block_size", "in [1, 256]")
        need(self.num_target_layers >= 2, "num_target_layers", "an int >= 2")
        need(len(self.target_layer_ids) >= 1, "target_layer_ids", "a non-empty list")
        need(all(0 <= i <= self.num_target_layers - 2 for i in self.target_layer_ids), "target_layer_ids",
             f"in [0, {self.num_target_layers - 2}] (num_target_layers-2: never the final layer)")
        need(0 <= self.mask_token_id < self.vocab_size, "mask_token_id", f"in [0, {self.vocab_size - 1}]")
        need(self.markov_rank >= 0, "markov_rank", "an int >= 0 (0 = no Markov head)")
        need(self.markov_head_type in MARKOV_HEAD_TYPES, "markov_head_type", f"one of {MARKOV_HEAD_TYPES}")
        need(self.markov_rows in MARKOV_ROWS, "markov_rows", f"one of {MARKOV_ROWS}")
        need(self.rms_norm_eps > 0, "rms_norm_eps", "> 0")
        need(self.rope_theta > 0, "rope_theta", "> 0")
        need(self.rope_scaling is None or self.rope_type in ROPE_TYPES, "rope_scaling",
             f"None or a dict with rope_type in {ROPE_TYPES}")
        need(not self.tie_word_embeddings, "tie_word_embeddings", "false (DSpark uses the target's lm_head)")

    # ------------------------------------------------------------------ derived
    @property
    def num_context_features(self) -> int:
        """n·H: width of the concatenated target features fed to `fc`."""
        return len(self.target_layer_ids) * self.hidden_size

    @property
    def rope_type(self) -> str:
        scaling = self.rope_scaling or {}
        return scaling.get("rope_type", scaling.get("type", "default"))

    @property
    def confidence_input_size(self) -> int:
        """H + r when the confidence head reads W1[x_{k-1}], else H (r = 0 without a Markov head)."""
        return self.hidden_size + (self.markov_rank if self.confidence_head_with_markov else 0)

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DrafterConfig":
        """Build from a config.json dict (target config + DSpark keys). Missing optional keys take
        DeepSpec defaults; `head_dim` defaults to hidden_size // num_attention_heads (Llama);
        transformers-5 `rope_parameters` is read when `rope_theta` is absent.

        Raises:
            ValueError: a required key is missing or a value is out of range (names field and value).
        """
        required = ("hidden_size", "intermediate_size", "num_attention_heads", "vocab_size",
                    "num_target_layers", "target_layer_ids", "mask_token_id")
        missing = [k for k in required if d.get(k) is None]
        if missing:
            raise ValueError(f"drafter config is missing required keys {missing}")
        rope_params = dict(d.get("rope_parameters") or {})
        rope_theta = d.get("rope_theta", rope_params.get("rope_theta", cls.rope_theta))
        rope_scaling = d.get("rope_scaling")
        if rope_scaling is None and rope_params.get("rope_type", "default") != "default":
            rope_scaling = {k: v for k, v in rope_params.items() if k != "rope_theta"}
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {k: d[k] for k in known if k in d and d[k] is not None and k != "extra"}
        kwargs["num_key_value_heads"] = d.get("num_key_value_heads") or d["num_attention_heads"]
        kwargs["head_dim"] = d.get("head_dim") or d["hidden_size"] // d["num_attention_heads"]
        kwargs["rope_theta"] = float(rope_theta)
        kwargs["rope_scaling"] = rope_scaling
        kwargs["extra"] = {k: v for k, v in d.items() if k not in known}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """config.json dict: `extra` (the target's keys) overlaid with the DSpark fields."""
        out = dict(self.extra)
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        if out["rope_scaling"] is None:
            del out["rope_scaling"]
        if out["markov_rows"] == "full":    # DeepSpec's own layout: keep its config.json keys unchanged
            del out["markov_rows"]
        return out
