"""`plain_decode_forward`: the draft gate's plain step as SGLang's own DECODE forward.

A plain step verifies no drafts: each request runs one row, its anchor (the token committed last step,
whose KV is not written yet). Running that row as a one-row TARGET_VERIFY window goes through the
attention backend's extend kernel and a separate KV write; SGLang's DECODE mode writes the KV inside
its decode kernel and is what no speculation runs. So the plain step borrows the decode path, with the
batch's sequence lengths shifted the way `ScheduleBatch.prepare_for_decode` shifts them (the anchor
counts), and restores them afterwards: the spec-v2 scheduler keeps committed lengths in the batch.

The anchor's KV slot is the first of the 2·(γ+1) slots the DSPARK decode preparation reserved past the
committed length, so no allocation happens here.
"""
from __future__ import annotations

import torch

from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode, ForwardMode

_SHIFTED = ("seq_lens", "seq_lens_cpu", "orig_seq_lens", "seq_lens_sum", "input_ids", "out_cache_loc",
            "spec_info", "forward_mode")


def plain_decode_forward(target_worker, batch, anchors: torch.Tensor, seq_lens: torch.Tensor,
                         req_to_token: torch.Tensor):
    """One DECODE forward of the target over each request's anchor; returns its logits output.

    anchors [R] int64 (the next input token of each request), seq_lens [R] int64 committed lengths
    (the anchor sits at position seq_lens). The output has R rows of logits and, because the capture
    mode is FULL, R rows of the drafter's captured target features (`hidden_states`), like a verify
    forward with ℓ = 0. `batch` (SGLang's ScheduleBatch) is left as it was, except for what the caller
    overwrites anyway."""
    saved = {name: getattr(batch, name) for name in _SHIFTED}
    slots = req_to_token[batch.req_pool_indices.to(torch.int64), seq_lens]           # [R] the anchors' KV slots
    try:
        batch.forward_mode = ForwardMode.DECODE
        batch.input_ids = anchors
        batch.out_cache_loc = slots.to(torch.int64)
        batch.spec_info = None          # a decode batch without speculative input
        batch.seq_lens = saved["seq_lens"] + 1
        if saved["seq_lens_cpu"] is not None:
            batch.seq_lens_cpu = saved["seq_lens_cpu"] + 1
        if saved["orig_seq_lens"] is not None:
            batch.orig_seq_lens = saved["orig_seq_lens"] + 1
        batch.seq_lens_sum = None       # recomputed from seq_lens_cpu by ForwardBatch.init_new
        out = target_worker.forward_batch_generation(batch, is_verify=True,
                                                     capture_hidden_mode=CaptureHiddenMode.FULL)
    finally:
        for name, value in saved.items():
            setattr(batch, name, value)
    return out.logits_output
