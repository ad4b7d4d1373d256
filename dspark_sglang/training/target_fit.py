"""Fitting a preset's drafter to another target: which target layers it reads and which token id is its mask.

A preset's `drafter` dict is written for the target it was tuned on (SmolLM2-135M: layers [1, 10, 19, 27] of 30,
mask id 16 = `<empty_output>`). For another target, `python/train_drafter.py --target-layer-ids auto
--mask-token-id auto` picks both from the target itself; `check_mask_token_unused` refuses a mask id that occurs
in the training data (the drafter could not tell a mask slot from that real token).
"""
from __future__ import annotations

from typing import Any

import numpy as np


def auto_target_layer_ids(num_layers: int, count: int) -> list[int]:
    """`count` layers spread evenly over [1, num_layers - 3] (low, middle and late features; never the final
    layer, whose HF output is post-norm). Example: 30 layers, 4 -> [1, 10, 18, 27] (the SmolLM2 presets use
    [1, 10, 19, 27]: `auto` is for other targets)."""
    if num_layers < 4:
        raise ValueError(f"target has {num_layers} layers; auto target_layer_ids needs >= 4 "
                         "-> fix: --target-layer-ids with explicit ids in [0, num_layers - 2]")
    last = num_layers - 3
    count = min(count, last)                                      # no duplicate ids on shallow targets
    if count == 1:
        return [last]
    return sorted({round(1 + i * (last - 1) / (count - 1)) for i in range(count)})


def parse_target_layer_ids(value: str, num_layers: int, count: int) -> list[int]:
    """`--target-layer-ids`: "auto" or a comma list of ints (checked against the target's depth)."""
    if value == "auto":
        return auto_target_layer_ids(num_layers, count)
    try:
        ids = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--target-layer-ids {value!r} must be 'auto' or comma-separated ints, e.g. 1,10,19,27") from None
    if ids != sorted(set(ids)):
        raise ValueError(f"--target-layer-ids {ids} must be increasing without repeats, e.g. 1,10,19,27")
    if not ids or not all(0 <= i <= num_layers - 2 for i in ids):
        raise ValueError(f"--target-layer-ids {ids} must be non-empty ids in [0, {num_layers - 2}] (the target has "
                         f"{num_layers} layers; its final one is never read) -> fix: --target-layer-ids auto")
    return ids


def _chat_template_ids(tokenizer) -> set[int]:
    """Token ids the chat template emits around a short conversation (with a system turn where the template
    accepts one: Gemma's and Mistral's refuse it)."""
    turns = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    for sample in ([{"role": "system", "content": "s"}] + turns, turns):
        try:
            rendered = tokenizer.apply_chat_template(sample, tokenize=True)
        except Exception:                                   # jinja TemplateError and the like: try without system
            continue
        return set(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)   # BatchEncoding or list
    raise ValueError("the tokenizer's chat template renders no user / assistant conversation, so mask_token_id "
                     "cannot be picked automatically -> fix: --mask-token-id N with an id your data never contains")


def auto_mask_token_id(tokenizer) -> int:
    """The highest-id special token of `tokenizer` that is not bos / eos / pad / unk and that its chat template
    does not emit: a token no prompt or answer contains (SmolLM2: 16 = `<empty_output>`)."""
    reserved = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}
    if getattr(tokenizer, "chat_template", None):
        reserved |= _chat_template_ids(tokenizer)
    special = [i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special and i not in reserved]
    if not special:
        raise ValueError("the tokenizer has no special token its chat template leaves unused, so mask_token_id "
                         "cannot be picked automatically -> fix: --mask-token-id N with an id your data never contains")
    return max(special)


def check_mask_token_unused(tokens: np.ndarray, mask_token_id: int) -> None:
    """Refuse a mask id that occurs in the training data (`tokens`: every token id of the feature cache)."""
    n = int(np.count_nonzero(tokens == mask_token_id))
    if n:
        raise ValueError(f"mask_token_id {mask_token_id} occurs {n} times in the training data, so the drafter "
                         "cannot tell a mask slot from that token -> fix: --mask-token-id auto (an unused special "
                         "token) or an id that never occurs")


def fit_drafter_to_target(drafter: dict[str, Any], target_config: dict[str, Any], tokenizer,
                          target_layer_ids: str | None, mask_token_id: str | None) -> dict[str, Any]:
    """The preset's drafter dict with `--target-layer-ids` / `--mask-token-id` applied ("auto", explicit, or
    None = the preset's), and its layer ids checked against the target's depth."""
    out = dict(drafter)
    num_layers = int(target_config["num_hidden_layers"])
    if target_layer_ids is not None:
        out["target_layer_ids"] = parse_target_layer_ids(target_layer_ids, num_layers, len(drafter["target_layer_ids"]))
    elif not all(0 <= i <= num_layers - 2 for i in out["target_layer_ids"]):
        raise ValueError(f"the preset's target_layer_ids {list(out['target_layer_ids'])} do not fit this target "
                         f"({num_layers} layers) -> fix: --target-layer-ids auto")
    if mask_token_id == "auto":
        out["mask_token_id"] = auto_mask_token_id(tokenizer)
    elif mask_token_id is not None:
        try:
            out["mask_token_id"] = int(mask_token_id)
        except ValueError:
            raise ValueError(f"--mask-token-id {mask_token_id!r} must be 'auto' or an int") from None
    vocab = int(target_config["vocab_size"])
    if not 0 <= out["mask_token_id"] < vocab:
        raise ValueError(f"mask_token_id {out['mask_token_id']} is not a token id of this target (vocab {vocab}) "
                         "-> fix: --mask-token-id auto")
    return out

