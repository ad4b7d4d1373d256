"""Fake (meta) implementations so that torch.compile and graph capture can trace the dspark ops."""
from __future__ import annotations

import torch

from dspark_sglang.ops import native


def _register() -> None:
    @torch.library.register_fake("dspark::verify_greedy")
    def _verify_greedy(draft_ids, target_ids, verify_lens):
        num_reqs, gamma = draft_ids.shape
        return (draft_ids.new_empty((num_reqs,), dtype=torch.int32),
                draft_ids.new_empty((num_reqs, gamma + 1), dtype=torch.int64))

    @torch.library.register_fake("dspark::verify_sampled")
    def _verify_sampled(draft_ids, draft_probs, target_probs, verify_lens, is_greedy, seed, offset):
        num_reqs, gamma = draft_ids.shape
        return (draft_ids.new_empty((num_reqs,), dtype=torch.int32),
                draft_ids.new_empty((num_reqs, gamma + 1), dtype=torch.int64))

    @torch.library.register_fake("dspark::confidence_survival")
    def _confidence_survival(conf_logits, sts_temperatures, threshold):
        return (torch.empty_like(conf_logits, dtype=torch.float32),
                conf_logits.new_empty((conf_logits.shape[0],), dtype=torch.int32))

    @torch.library.register_fake("dspark::schedule_prefix")
    def _schedule_prefix(survival, sps_table, min_len, max_len, mode):
        return (survival.new_empty((survival.shape[0],), dtype=torch.int32),
                survival.new_empty((), dtype=torch.float64))

    @torch.library.register_fake("dspark::schedule_topk")
    def _schedule_topk(survival, budget, min_len, max_len):
        return survival.new_empty((survival.shape[0],), dtype=torch.int32)

    @torch.library.register_fake("dspark::sample_categorical")
    def _sample_categorical(probs, uniforms):
        return probs.new_empty((probs.shape[0],), dtype=torch.int64)

    @torch.library.register_fake("dspark::pack_linear_weight")
    def _pack_linear_weight(weight):
        pair = 2 if weight.dtype == torch.bfloat16 else 1
        return weight.new_empty((-(-weight.shape[0] // 16) * 16, -(-weight.shape[1] // pair) * pair))

    @torch.library.register_fake("dspark::packed_linear")
    def _packed_linear(x, packed, bias, out_features):
        return x.new_empty((x.shape[0], out_features))


if native.has_op("verify_greedy"):
    _register()
