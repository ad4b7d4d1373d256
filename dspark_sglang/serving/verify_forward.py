"""`RaggedVerifyInput`: SGLang's DFlash verify input with per-request verify rows (route B).

A TARGET_VERIFY forward normally verifies `draft_token_num` rows per request. This input carries
`dspark_rows` ([R] int32, ℓ_r + 1 rows each) which the plugin's hooks on
`IntelAMXAttnBackend._build_extend_metadata` / `.init_forward_metadata` turn into ragged extend
lengths, start offsets, `seq_lens + rows` and `max_extend_len = max rows`. Logits and captured
hidden states then come back as Σ rows. `tree_topk = 1`: a chain needs no custom mask (the kernel's
causal mask is exact), which intel_amx checks under that name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from sglang.srt.speculative.dflash_info import DFlashVerifyInput


@dataclass
class RaggedVerifyInput(DFlashVerifyInput):
    tree_topk: int = 1
    dspark_rows: Optional[torch.Tensor] = None
    """[R] int32 verify rows per request (x0 + ℓ_r drafts)."""
    dspark_max_rows: int = 0
    """max(dspark_rows), on the host."""

    def set_rows(self, rows: torch.Tensor, max_rows: int) -> None:
        self.dspark_rows = rows
        self.dspark_max_rows = int(max_rows)
