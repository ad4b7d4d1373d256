"""pack_for_inference: a drafter whose linears and draft-vocabulary heads run packed_linear proposes what the
nn.Linear drafter proposes (greedy drafts equal; confidences and probabilities within bf16 / fp32 rounding)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dspark_sglang.drafter.packed_inference import PackedLinear, pack_for_inference
from dspark_sglang.ops import native
from dspark_sglang.sampling import SamplingBatch
from .checkpoint_factory import make_drafter, target_hidden


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_packed_linear_module_matches_linear(dtype):
    linear = nn.Linear(48, 40, bias=True).to(dtype)
    packed = PackedLinear.from_linear(linear)
    x = torch.randn(3, 5, 48, dtype=dtype)
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed(x).float(), linear(x).float(), **tol)
    assert packed.weight is not None and packed.weight.shape == (40, 48)


@pytest.mark.skipif(not native.packed_linear_is_fast(torch.float32, torch.device("cpu")),
                    reason="no packed_linear vector face here")
@pytest.mark.parametrize("head", ["vanilla", "gated", "rnn"])
def test_packed_drafter_proposes_the_same_block(head):
    drafter, _ = make_drafter(markov_head_type=head)
    drafter = drafter.float()
    cache = drafter.new_cache(3)
    for r in range(3):
        drafter.append_context(cache, r, target_hidden(6 + r, drafter.config), torch.arange(6 + r))
    anchors, positions = torch.tensor([9, 4, 2]), torch.tensor([6, 7, 8])
    vocab = torch.arange(0, drafter.config.vocab_size, 3)
    drafter.set_draft_vocab(vocab)
    sampling = SamplingBatch.from_lists([0.0, 1.0, 0.7])
    before = drafter.propose(cache, anchors, positions, sampling, torch.Generator().manual_seed(0), need_probs=True)
    linears = sum(isinstance(m, nn.Linear) for m in drafter.modules())
    assert pack_for_inference(drafter) == linears > 0
    assert not any(isinstance(m, nn.Linear) for m in drafter.modules()) and drafter.packed_heads
    drafter.set_draft_vocab(vocab)          # drop the cached unpacked heads
    after = drafter.propose(cache, anchors, positions, sampling, torch.Generator().manual_seed(0), need_probs=True)
    weight, bias, w2 = drafter.draft_head_weights()
    assert isinstance(weight, PackedLinear) and bias is None and (w2 is None or isinstance(w2, PackedLinear))
    assert torch.equal(after.draft_ids, before.draft_ids)
    torch.testing.assert_close(after.conf_logits, before.conf_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after.draft_probs, before.draft_probs, rtol=1e-4, atol=1e-5)
