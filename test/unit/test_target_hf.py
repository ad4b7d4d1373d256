"""HFTarget / TargetSequence / TargetBatch against plain full-sequence forwards of the same HF model."""
import pytest
import torch

from dspark_sglang.target import HFTarget
from dspark_sglang.target.testing import tiny_llama

ATOL = 1e-5   # fp32: cached vs uncached attention differ only by summation order


def _full(target, ids):
    out = target.model(ids.view(1, -1), output_hidden_states=True)
    hidden = torch.cat([out.hidden_states[l + 1][0] for l in target.target_layer_ids], dim=-1)
    return out.logits[0], hidden


@pytest.fixture(scope="module")
def target():
    return tiny_llama(target_layer_ids=(0, 2))


def test_prefill_verify_commit_match_full_forward(target):
    prompt = torch.tensor([3, 8, 1, 22, 5, 9, 14])
    seq = target.new_sequence()
    pre = seq.prefill(prompt)
    ref_logits, ref_hidden = _full(target, prompt)
    torch.testing.assert_close(pre.logits, ref_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(pre.hidden, ref_hidden, atol=ATOL, rtol=0)
    assert pre.hidden.shape == (7, 2 * 32)

    window = torch.tensor([4, 7, 11, 2])                 # anchor + 3 drafts
    out = seq.verify(window)
    ref_logits, ref_hidden = _full(target, torch.cat([prompt, window]))
    torch.testing.assert_close(out.logits, ref_logits[7:], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.hidden, ref_hidden[7:], atol=ATOL, rtol=0)

    seq.commit(2)                                        # anchor + 1 accepted draft
    assert seq.length == 9 and seq.cache.get_seq_length() == 9
    out = seq.verify(torch.tensor([30, 31]))             # the correction token was 30
    ref_logits, _ = _full(target, torch.tensor([3, 8, 1, 22, 5, 9, 14, 4, 7, 30, 31]))
    torch.testing.assert_close(out.logits, ref_logits[9:], atol=ATOL, rtol=0)
    seq.commit(2)                                        # nothing to drop: the cache keeps all
    assert seq.cache.get_seq_length() == 11


def test_batched_forward_matches_single_requests(target):
    prompts = [torch.tensor([3, 8, 1, 22, 5]), torch.tensor([9, 14]), torch.tensor([2, 6, 6, 7, 30, 12, 1, 0])]
    windows = [torch.tensor([4, 7, 11]), torch.tensor([5]), torch.tensor([1, 2, 3, 4, 5])]
    batch = target.new_batch(3)
    pre = batch.forward([0, 1, 2], prompts)
    for r, p in enumerate(prompts):
        batch.commit(r, p.numel())
        ref_logits, ref_hidden = _full(target, p)
        torch.testing.assert_close(pre[r].logits, ref_logits, atol=ATOL, rtol=0)
        torch.testing.assert_close(pre[r].hidden, ref_hidden, atol=ATOL, rtol=0)
    # a subset, out of order, with ragged windows
    outs = batch.forward([2, 0], [windows[2], windows[0]])
    for out, r in zip(outs, [2, 0]):
        ref_logits, ref_hidden = _full(target, torch.cat([prompts[r], windows[r]]))
        torch.testing.assert_close(out.logits, ref_logits[prompts[r].numel():], atol=ATOL, rtol=0)
        torch.testing.assert_close(out.hidden, ref_hidden[prompts[r].numel():], atol=ATOL, rtol=0)
    batch.commit(2, 2)                                  # keep [1, 2]
    batch.commit(0, 3)                                  # keep all
    outs = batch.forward([0, 1, 2], [torch.tensor([9]), windows[1], torch.tensor([8, 8])])
    seqs = [torch.cat([prompts[0], windows[0], torch.tensor([9])]), torch.cat([prompts[1], windows[1]]),
            torch.cat([prompts[2], torch.tensor([1, 2, 8, 8])])]
    for out, full_ids, w in zip(outs, seqs, (1, 1, 2)):
        ref_logits, _ = _full(target, full_ids)
        torch.testing.assert_close(out.logits, ref_logits[-w:], atol=ATOL, rtol=0)


def test_properties_and_layer_id_errors(target):
    assert target.eos_token_ids == (39,)
    assert target.num_features == 64 and target.vocab_size == 40
    assert target.lm_head.weight.shape == (40, 32)
    with pytest.raises(ValueError, match=r"target_layer_ids must be .* \[0, 2\]"):
        HFTarget(target.model, [3])                     # the final layer (post-norm in HF) is refused
    with pytest.raises(ValueError, match="target_layer_ids"):
        HFTarget(target.model, [])
