"""The DeepSpec DSpark checkpoint contract: one function that checks a drafter checkpoint (config.json
dict + weight shapes) against the target model and reports EVERY violation at once, each with its fix.

It runs before any weight is read, on `safetensors` header shapes only.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from dspark_sglang.drafter.config import DSPARK_ARCHITECTURE, MARKOV_HEAD_TYPES, MARKOV_ROWS, DrafterConfig

TARGET_WEIGHT_NAMES = ("embed_tokens.weight", "lm_head.weight")
"""Copies of the target's modules a checkpoint may carry; ignored at load (the target's are used)."""

REQUIRED_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "vocab_size", "block_size",
                 "num_target_layers", "target_layer_ids", "mask_token_id")

SPECULATORS_CONFIG_KEYS = ("speculators_config", "speculators_model_type", "speculators_version")

_HEAD_PARAM_PREFIX = {"gated": "markov_head.gate_proj.", "rnn": "markov_head.joint_proj."}


class CheckpointContractError(ValueError):
    """A drafter checkpoint does not fit the DSpark contract or the target; `problems` lists each one."""

    def __init__(self, problems: list[str], source: str = "drafter checkpoint") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} violates the DSpark checkpoint contract "
                         f"({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):\n{lines}")


def _speculators_evidence(cfg: Mapping[str, Any], names: list[str]) -> str | None:
    keys = [k for k in SPECULATORS_CONFIG_KEYS if k in cfg]
    if keys:
        return f"config.json has {keys}"
    archs = [a for a in (cfg.get("architectures") or []) if "speculator" in str(a).lower()]
    if archs:
        return f"architectures {archs}"
    transformer = [n for n in names if n.startswith("transformer.")]
    if transformer:
        return f"weights named like {transformer[0]!r}"
    if names and "embed_tokens.weight" in names and not any(n.startswith(("layers.", "fc.")) for n in names):
        return "weights have embed_tokens but no DSpark fc/layers"
    return None


def _target_value(target_config: Mapping[str, Any], key: str) -> Any:
    """`key` of the target's HF config, looking inside `text_config` for multimodal configs."""
    if key in target_config:
        return target_config[key]
    return (target_config.get("text_config") or {}).get(key)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def expected_state_shapes(config: DrafterConfig) -> dict[str, tuple[int, ...]]:
    """Weight name -> shape of a drafter built from `config` (built on the meta device: no memory)."""
    from dspark_sglang.drafter.model import DSparkDrafter  # local: model imports nothing from here

    with torch.device("meta"):
        embed = nn.Embedding(config.vocab_size, config.hidden_size)
        head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        model = DSparkDrafter(config, embed, head)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def check_checkpoint_contract(drafter_config: Mapping[str, Any], state_dict_shapes: Mapping[str, tuple],
                              target_config: Mapping[str, Any], source: str = "drafter checkpoint",
                              draft_vocab_size: int | None = None) -> None:
    """Check a DeepSpec DSpark checkpoint against the contract and the target.

    Args:
        drafter_config:    the checkpoint's config.json dict.
        state_dict_shapes: weight name -> shape, as stored (`embed_tokens`/`lm_head` copies allowed).
        target_config:     the target model's HF config dict (Qwen3, Llama, ...).
        source:            how to name the checkpoint in the message (e.g. its path).
        draft_vocab_size:  V', the length of the checkpoint's draft_vocab.json (None: it has none); the
                           Markov rows' count when config.json says markov_rows "draft_vocab".

    Raises:
        CheckpointContractError: listing every problem with its fix. A "speculators"-format
        checkpoint (slot j predicts anchor+j) is refused on its own, since nothing else applies.

    Example:
        >>> check_checkpoint_contract(json.load(open("ckpt/config.json")), shapes, target.config.to_dict())  # doctest: +SKIP
    """
    cfg = dict(drafter_config)
    shapes = {k: tuple(v) for k, v in state_dict_shapes.items()}
    names = sorted(shapes)
    evidence = _speculators_evidence(cfg, names)
    if evidence is not None:
        raise CheckpointContractError([
            f"this is a 'speculators'-format checkpoint ({evidence}): there block slot j predicts the token "
            f"at anchor+j, whereas DSpark is anchor-first (slot 0 holds the anchor x0 and slot k predicts "
            f"anchor+k+1); loading it as DSpark would silently give τ≈1 → fix: use a DeepSpec DSpark "
            f"checkpoint (architectures ['{DSPARK_ARCHITECTURE}'], e.g. deepseek-ai/dspark_qwen3_8b_block7)"],
            source)

    problems: list[str] = []
    config_ok = True          # False once the config cannot be built: skip the per-weight checks

    def bad(msg: str, breaks_config: bool = False) -> None:
        nonlocal config_ok
        problems.append(msg)
        config_ok = config_ok and not breaks_config

    archs = cfg.get("architectures")
    if archs != [DSPARK_ARCHITECTURE]:
        bad(f"architectures is {archs!r}, expected ['{DSPARK_ARCHITECTURE}'] → fix: use a checkpoint saved by "
            f"DeepSpec or dspark_sglang.drafter.save_drafter (this loader implements {DSPARK_ARCHITECTURE})")
    for key in REQUIRED_KEYS:
        if cfg.get(key) is None:
            bad(f"config.json lacks '{key}' → fix: add it (DeepSpec writes it; see DrafterConfig)", True)

    hidden, vocab = cfg.get("hidden_size"), cfg.get("vocab_size")
    num_target_layers = cfg.get("num_target_layers")
    for key, ours in (("hidden_size", hidden), ("vocab_size", vocab), ("num_hidden_layers", num_target_layers)):
        theirs = _target_value(target_config, key)
        ours_name = "num_target_layers" if key == "num_hidden_layers" else key
        if ours is not None and theirs is not None and ours != theirs:
            bad(f"{ours_name}={ours} but the target's {key}={theirs} → fix: this drafter was trained for a "
                f"different target; use the drafter checkpoint made for this target model")

    mask = cfg.get("mask_token_id")
    if mask is not None and not (_is_int(mask) and _is_int(vocab) and 0 <= mask < vocab):
        bad(f"mask_token_id={mask!r} is not a token id in [0, vocab_size={vocab}) → fix: set mask_token_id to "
            f"the id used in training (151669 for Qwen3)", True)

    layer_ids = cfg.get("target_layer_ids")
    if layer_ids is not None:
        if not isinstance(layer_ids, list) or not layer_ids or not all(_is_int(i) for i in layer_ids):
            bad(f"target_layer_ids={layer_ids!r} must be a non-empty list of ints → fix: set it to the "
                f"layers the drafter was trained on (e.g. [1, 9, 17, 25, 33] for Qwen3-8B)", True)
        elif _is_int(num_target_layers):
            last = num_target_layers - 1
            final = [i for i in layer_ids if i == last]
            out = [i for i in layer_ids if not 0 <= i < last]
            if final:
                bad(f"target_layer_ids {layer_ids} include the target's final layer {last}, whose HF output is "
                    f"post-norm → fix: use layer ids in [0, {last - 1}]", True)
            if [i for i in out if i != last]:
                bad(f"target_layer_ids {[i for i in out if i != last]} are outside [0, {last - 1}] "
                    f"(num_target_layers={num_target_layers}) → fix: use valid layer ids", True)

    block_size = cfg.get("block_size")
    if block_size is not None and not (_is_int(block_size) and block_size >= 1):
        bad(f"block_size={block_size!r} must be an int >= 1 → fix: set it to γ used in training (7)", True)

    rank = cfg.get("markov_rank", DrafterConfig.markov_rank)
    head_type = cfg.get("markov_head_type", DrafterConfig.markov_head_type)
    if not (_is_int(rank) and rank >= 0):
        bad(f"markov_rank={rank!r} must be an int >= 0 → fix: set it to markov_head.markov_w1's second dim", True)
    if head_type not in MARKOV_HEAD_TYPES:
        bad(f"markov_head_type={head_type!r} is unknown, expected one of {list(MARKOV_HEAD_TYPES)} → fix: "
            f"set it to the type the checkpoint was trained with", True)
    w1 = shapes.get("markov_head.markov_w1.weight")
    explained: set[str] = set()
    if w1 is not None and len(w1) == 2 and _is_int(rank) and w1[1] != rank:
        bad(f"markov_rank={rank} but markov_head.markov_w1.weight has shape {list(w1)} (rank {w1[1]}) → fix: "
            f"set markov_rank to {w1[1]}", True)
        explained.add("markov_head.")
    if w1 is None and _is_int(rank) and rank > 0:
        bad(f"markov_rank={rank} but the checkpoint has no markov_head.markov_w1.weight → fix: set markov_rank "
            f"to 0 if this is a plain DFlash checkpoint", True)
        explained.add("markov_head.")
    rows = cfg.get("markov_rows", "full")
    compact_rows = None                  # (V', r) for markov_w1 / markov_w2 stored over the draft vocabulary
    if rows not in MARKOV_ROWS:
        bad(f"markov_rows={rows!r} is unknown, expected one of {list(MARKOV_ROWS)} → fix: \"full\" when "
            f"markov_w1 / markov_w2 have vocab_size rows, \"draft_vocab\" when they have one per draft_vocab.json id",
            True)
    elif rows == "draft_vocab" and _is_int(rank) and rank > 0:
        if draft_vocab_size is None:
            bad("markov_rows is \"draft_vocab\" (one Markov row per draft-vocabulary id) but the checkpoint has no "
                "draft_vocab.json → fix: put the draft_vocab.json it was saved with next to config.json")
            explained.add("markov_head.markov_w")
        else:
            compact_rows = (draft_vocab_size, rank)
    for other_type, prefix in _HEAD_PARAM_PREFIX.items():
        if head_type != other_type and any(n.startswith(prefix) for n in names):
            bad(f"markov_head_type={head_type!r} but the weights include {prefix}* → fix: set markov_head_type "
                f"to {other_type!r}", True)
            explained.add("markov_head.")

    has_conf = any(n.startswith("confidence_head.") for n in names)
    if cfg.get("enable_confidence_head", True) and not has_conf:
        bad("enable_confidence_head is true but the checkpoint has no confidence_head.proj → fix: set "
            "enable_confidence_head to false", True)
        explained.add("confidence_head.")

    for name in TARGET_WEIGHT_NAMES:
        shape = shapes.get(name)
        want = (_target_value(target_config, "vocab_size"), _target_value(target_config, "hidden_size"))
        if shape is not None and None not in want and shape != want:
            bad(f"{name} has shape {list(shape)}, the target's is {list(want)} → fix: the checkpoint was made "
                f"for another target; use the matching drafter")

    if config_ok:
        try:
            expected = expected_state_shapes(DrafterConfig.from_dict(cfg))
        except ValueError as exc:
            bad(f"{exc} → fix: correct config.json")
        else:
            if compact_rows is not None:
                expected.update({"markov_head.markov_w1.weight": compact_rows,
                                 "markov_head.markov_w2.weight": compact_rows})
            stored = {n: s for n, s in shapes.items() if n not in TARGET_WEIGHT_NAMES}
            missing = [n for n in expected if n not in stored and not n.startswith(tuple(explained))]
            unexpected = [n for n in stored if n not in expected and not n.startswith(tuple(explained))]
            wrong = [f"{n}: {list(stored[n])} != expected {list(expected[n])}" for n in expected
                     if n in stored and stored[n] != expected[n] and not n.startswith(tuple(explained))]
            if missing:
                bad(f"missing weights {missing} → fix: the checkpoint is incomplete or config.json "
                    f"(num_hidden_layers, markov_*, confidence_*) does not describe it")
            if unexpected:
                bad(f"unexpected weights {unexpected} → fix: config.json does not describe these weights "
                    f"(num_hidden_layers, markov_*, confidence_*) or they belong to another format")
            if wrong:
                bad(f"wrong weight shapes [{'; '.join(wrong)}] → fix: config.json sizes (hidden, heads, "
                    f"head_dim, intermediate, target_layer_ids, confidence_head_with_markov) must match the weights")
    if problems:
        raise CheckpointContractError(problems, source)
