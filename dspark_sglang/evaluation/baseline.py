"""Plain Hugging Face `generate` on the same prompts: the speed (and greedy output) baseline."""
from __future__ import annotations

from typing import Sequence

import torch

from dspark_sglang.target import HFTarget


@torch.no_grad()
def hf_generate(target: HFTarget, prompts: Sequence[torch.Tensor], max_new_tokens: int, temperature: float = 0.0,
                top_k: int = 0, top_p: float = 1.0, batch_size: int = 1) -> list[list[int]]:
    """Generate with `model.generate` (left-padded batches of `batch_size`); returns the new tokens of each
    prompt, cut after the first EOS (EOS included), like the evaluator's output."""
    model, eos = target.model, set(target.eos_token_ids)
    pad_id = model.generation_config.pad_token_id
    pad_id = pad_id if pad_id is not None else (min(eos) if eos else 0)
    kwargs = dict(do_sample=False) if temperature == 0 else dict(do_sample=True, temperature=temperature,
                                                                  top_k=top_k if top_k > 0 else None, top_p=top_p)
    outputs: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(p.numel() for p in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.int64)
        mask = torch.zeros(len(chunk), width, dtype=torch.int64)
        for i, p in enumerate(chunk):
            ids[i, width - p.numel():] = p
            mask[i, width - p.numel():] = 1
        out = model.generate(input_ids=ids.to(target.device), attention_mask=mask.to(target.device),
                             max_new_tokens=max_new_tokens, pad_token_id=pad_id, **kwargs)
        for row in out[:, width:].tolist():
            cut = next((j + 1 for j, tok in enumerate(row) if tok in eos), len(row))
            outputs.append(row[:cut])
    return outputs
