"""Save and load DSpark drafters in the DeepSpec format: `config.json` (target config + DSpark keys)
and `model.safetensors` (or a sharded `model.safetensors.index.json`) with DeepSpec weight names.

Loading checks the whole contract (`contract.check_checkpoint_contract`) on header shapes before any
weight is read, then binds the TARGET's `embed_tokens` / `lm_head` (copies in the checkpoint are ignored).

`save_drafter(..., markov_rows="draft_vocab")` stores the Markov head's W1 / W2 only for the ids of the
drafter's draft vocabulary (config.json `markov_rows`; W2 is only read there, W1 only for the previous
token, a drafted one except at slot 0): the shipped SmolLM2 drafter (rank 128) keeps 10,603 of 49,152 rows, 25 → 5.4 MB in
bf16. `load_drafter` expands them to the full shapes, other rows zero.
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from dspark_sglang.drafter.draft_vocab import read_draft_vocab, write_draft_vocab
from dspark_sglang.drafter.config import MARKOV_ROWS, DrafterConfig
from dspark_sglang.drafter.contract import TARGET_WEIGHT_NAMES, check_checkpoint_contract
from dspark_sglang.drafter.model import DSparkDrafter

MARKOV_ROW_WEIGHTS = ("markov_head.markov_w1.weight", "markov_head.markov_w2.weight")
"""The [V, r] Markov weights that `markov_rows="draft_vocab"` stores for the draft vocabulary only."""
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


def save_drafter(drafter: DSparkDrafter, path: str, include_target_weights: bool = False,
                 markov_rows: str = "full") -> None:
    """Write `path/config.json` and `path/model.safetensors`.

    Args:
        drafter:                the drafter to save.
        path:                   output directory (created if needed).
        include_target_weights: also store copies of the target's `embed_tokens.weight` and
                                `lm_head.weight` (as DeepSpec's save_pretrained does); off by default.
        markov_rows:            "full" (DeepSpec's layout) or "draft_vocab": Markov W1 / W2 rows of the
                                drafter's draft vocabulary only. A drafter with a draft vocabulary gets its
                                draft_vocab.json either way.

    Raises:
        ValueError: markov_rows is unknown, or "draft_vocab" for a drafter without a draft vocabulary.

    Example:
        >>> save_drafter(drafter, "out/dspark")  # doctest: +SKIP
        >>> sorted(os.listdir("out/dspark"))  # doctest: +SKIP
        ['config.json', 'model.safetensors']
    """
    if markov_rows not in MARKOV_ROWS:
        raise ValueError(f"save_drafter: markov_rows must be 'full' or 'draft_vocab'; got {markov_rows!r}")
    ids = None if drafter.draft_vocab_ids is None else torch.unique(drafter.draft_vocab_ids.cpu())   # [V'] sorted
    compact = markov_rows == "draft_vocab" and drafter.config.markov_rank > 0
    if compact and ids is None:
        raise ValueError("save_drafter: markov_rows='draft_vocab' needs a drafter with a draft vocabulary "
                         "(set_draft_vocab); fix: set one or save with markov_rows='full'")
    os.makedirs(path, exist_ok=True)
    config = drafter.config.to_dict()
    if compact:
        config["markov_rows"] = "draft_vocab"
    with open(os.path.join(path, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    tensors = {name: t.detach().contiguous().cpu() for name, t in drafter.state_dict().items()}
    if compact:
        for name in MARKOV_ROW_WEIGHTS:
            tensors[name] = tensors[name][ids].contiguous()                                 # [V', r]
    if ids is not None:
        write_draft_vocab(path, ids)                    # the drafter drafts from these ids: part of what it is
    if include_target_weights:
        tensors["embed_tokens.weight"] = drafter.embed_tokens.weight.detach().contiguous().cpu()
        tensors["lm_head.weight"] = drafter.lm_head.weight.detach().contiguous().cpu()
    save_file(tensors, os.path.join(path, WEIGHTS_NAME), metadata={"format": "pt"})


def read_checkpoint_config(path: str) -> dict[str, Any]:
    """The checkpoint's config.json as a dict; FileNotFoundError/ValueError name the file."""
    file = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"DSpark drafter checkpoint has no {CONFIG_NAME}: {file} does not exist")
    try:
        with open(file) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file} is not valid JSON: {exc}") from exc


def weight_files(path: str) -> dict[str, str]:
    """Weight name -> safetensors file holding it (single file or sharded index)."""
    single, index = os.path.join(path, WEIGHTS_NAME), os.path.join(path, INDEX_NAME)
    if os.path.isfile(single):
        with safe_open(single, framework="pt") as f:
            return {name: single for name in f.keys()}
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return {name: os.path.join(path, shard) for name, shard in weight_map.items()}
    raise FileNotFoundError(f"DSpark drafter checkpoint has no weights: neither {single} nor {index} exists")


def read_state_dict_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Weight name -> shape from the safetensors headers (no tensor data is read)."""
    shapes: dict[str, tuple[int, ...]] = {}
    by_file: dict[str, list[str]] = {}
    for name, file in weight_files(path).items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        if not os.path.isfile(file):
            raise FileNotFoundError(f"weight shard {file} listed in {INDEX_NAME} does not exist")
        with safe_open(file, framework="pt") as f:
            for name in names:
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def load_drafter(path: str, target_config: dict[str, Any], embed_tokens: nn.Module, lm_head: nn.Module,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> DSparkDrafter:
    """Load a DeepSpec DSpark checkpoint for a given target (Qwen3 or Llama family).

    Args:
        path:          checkpoint directory (config.json + model.safetensors or sharded index).
        target_config: the target's HF config dict (e.g. `target.config.to_dict()`).
        embed_tokens:  the target's embedding (weight [V, H]); shared, not copied.
        lm_head:       the target's output projection (weight [V, H]); shared, not copied.
        dtype:         parameter dtype; None keeps the dtype of the checkpoint's `fc.weight`.
        device:        parameter device; None uses the device of `lm_head.weight`.

    Returns:
        DSparkDrafter in eval mode, drafting from the folder's `draft_vocab.json` when it has one.

    Raises:
        FileNotFoundError: config.json or the weights are missing (the path is named).
        CheckpointContractError: every contract violation, each with its fix.

    Example:
        >>> drafter = load_drafter("dspark_qwen3_8b_block7", target.config.to_dict(),  # doctest: +SKIP
        ...                        target.model.embed_tokens, target.lm_head, dtype=torch.bfloat16)
    """
    cfg, vocab_ids = check_checkpoint(path, target_config)
    files = weight_files(path)
    config = DrafterConfig.from_dict({**cfg, "markov_rows": "full"})   # held in memory with full rows
    device = torch.device(device) if device is not None else lm_head.weight.device
    with torch.device("meta"):
        drafter = DSparkDrafter(config, embed_tokens, lm_head)
    state: dict[str, torch.Tensor] = {}
    for name, file in files.items():
        if name in TARGET_WEIGHT_NAMES:
            continue
        with safe_open(file, framework="pt") as f:
            state[name] = f.get_tensor(name)
    if cfg.get("markov_rows", "full") == "draft_vocab" and config.markov_rank > 0:
        for name in MARKOV_ROW_WEIGHTS:
            full = state[name].new_zeros(config.vocab_size, config.markov_rank)            # [V, r]
            full[vocab_ids] = state[name]                                                   # rows [V', r]
            state[name] = full
    dtype = dtype if dtype is not None else state["fc.weight"].dtype
    state = {name: t.to(device=device, dtype=dtype) for name, t in state.items()}
    drafter.load_state_dict(state, strict=True, assign=True)
    drafter.rotary.reset_inv_freq(device)
    drafter.set_draft_vocab(vocab_ids)
    return drafter.eval()


def check_checkpoint(path: str, target_config: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor | None]:
    """Read a checkpoint's config.json, weight headers and draft_vocab.json and check the whole contract
    (no weight is read).

    Returns:
        (config.json dict, draft vocabulary ids [V'] int64 or None).
    Raises:
        FileNotFoundError / ValueError naming the file; CheckpointContractError listing every problem.
    """
    cfg = read_checkpoint_config(path)
    shapes = read_state_dict_shapes(path)
    vocab = cfg.get("vocab_size")
    vocab_ids = read_draft_vocab(path, vocab) if isinstance(vocab, int) and vocab > 0 else None
    check_checkpoint_contract(cfg, shapes, target_config, source=f"drafter checkpoint {path}",
                              draft_vocab_size=None if vocab_ids is None else int(vocab_ids.numel()))
    return cfg, vocab_ids
