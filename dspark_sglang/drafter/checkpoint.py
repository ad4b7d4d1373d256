"""Save and load DSpark drafters in the DeepSpec format: `config.json` (target config + DSpark keys)
and `model.safetensors` (or a sharded `model.safetensors.index.json`) with DeepSpec weight names.

Loading checks the whole contract (`contract.check_checkpoint_contract`) on header shapes before any
weight is read, then binds the TARGET's `embed_tokens` / `lm_head` (copies in the checkpoint are ignored).
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from dspark_sglang.drafter.draft_vocab import read_draft_vocab
from dspark_sglang.drafter.config import DrafterConfig
from dspark_sglang.drafter.contract import TARGET_WEIGHT_NAMES, check_checkpoint_contract
from dspark_sglang.drafter.model import DSparkDrafter

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


def save_drafter(drafter: DSparkDrafter, path: str, include_target_weights: bool = False) -> None:
    """Write `path/config.json` and `path/model.safetensors`.

    Args:
        drafter:                the drafter to save.
        path:                   output directory (created if needed).
        include_target_weights: also store copies of the target's `embed_tokens.weight` and
                                `lm_head.weight` (as DeepSpec's save_pretrained does); off by default.

    Example:
        >>> save_drafter(drafter, "out/dspark")  # doctest: +SKIP
        >>> sorted(os.listdir("out/dspark"))  # doctest: +SKIP
        ['config.json', 'model.safetensors']
    """
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_NAME), "w") as f:
        json.dump(drafter.config.to_dict(), f, indent=2, sort_keys=True)
    tensors = {name: t.detach().contiguous().cpu() for name, t in drafter.state_dict().items()}
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
    cfg = read_checkpoint_config(path)
    files = weight_files(path)
    shapes = read_state_dict_shapes(path)
    check_checkpoint_contract(cfg, shapes, target_config, source=f"drafter checkpoint {path}")
    config = DrafterConfig.from_dict(cfg)
    device = torch.device(device) if device is not None else lm_head.weight.device
    with torch.device("meta"):
        drafter = DSparkDrafter(config, embed_tokens, lm_head)
    state: dict[str, torch.Tensor] = {}
    for name, file in files.items():
        if name in TARGET_WEIGHT_NAMES:
            continue
        with safe_open(file, framework="pt") as f:
            state[name] = f.get_tensor(name)
    dtype = dtype if dtype is not None else state["fc.weight"].dtype
    state = {name: t.to(device=device, dtype=dtype) for name, t in state.items()}
    drafter.load_state_dict(state, strict=True, assign=True)
    drafter.rotary.reset_inv_freq(device)
    drafter.set_draft_vocab(read_draft_vocab(path, config.vocab_size))
    return drafter.eval()
