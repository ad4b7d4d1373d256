"""The batched training forward (many anchors, one masked pass) equals the inference block path
(`DSparkDrafter.block_hidden` from a context cache), and the teacher-forced logits equal the Markov
head's own step for the same previous tokens."""
from __future__ import annotations

import pytest
import torch

from dspark_sglang.training.forward import block_attention_mask, sample_anchors, training_block_hidden
from dspark_sglang.training.losses import teacher_forced_logits
from test.unit.checkpoint_factory import make_drafter, target_hidden


@pytest.mark.parametrize("family,head", [("qwen3", "vanilla"), ("llama", "rnn"), ("llama", "gated")])
def test_training_forward_matches_block_hidden(family, head):
    drafter, _ = make_drafter(family, markov_head_type=head)
    cfg = drafter.config
    lengths = [13, 9]
    ctx = torch.zeros(2, 13, cfg.num_context_features)
    ids = torch.zeros(2, 13, dtype=torch.int64)
    for b, n in enumerate(lengths):
        ctx[b, :n] = target_hidden(n, cfg, seed=10 + b)
        ids[b, :n] = torch.randint(0, cfg.vocab_size - 1, (n,))
    anchors = torch.tensor([[1, 5, 12], [0, 4, 0]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    h = training_block_hidden(drafter, ctx, ids, anchors, valid)                     # [2, 3, γ, H]
    assert h.shape == (2, 3, cfg.block_size, cfg.hidden_size)
    for b, n in enumerate(lengths):
        cache = drafter.new_cache(1)
        drafter.append_context(cache, 0, ctx[b, :n], torch.arange(n))
        for j in range(3):
            if not valid[b, j]:
                continue
            p = anchors[b, j]
            ref = drafter.block_hidden(cache, drafter.make_block_ids(ids[b, p].view(1)), p.view(1))[0]
            torch.testing.assert_close(h[b, j], ref, rtol=1e-5, atol=1e-5)


def test_teacher_forced_logits_match_markov_steps():
    drafter, _ = make_drafter("llama", markov_head_type="rnn")
    h = torch.randn(3, drafter.config.block_size, drafter.config.hidden_size)
    prev = torch.randint(0, drafter.config.vocab_size, (3, drafter.config.block_size))
    logits, conf = teacher_forced_logits(drafter, h, prev)
    base = drafter.lm_head(h)
    state = drafter.markov_head.init_state(h)
    for k in range(h.shape[1]):
        bias, state = drafter.markov_head.step(h[:, k], prev[:, k], state)
        torch.testing.assert_close(logits[:, k], base[:, k] + bias)
    torch.testing.assert_close(conf, drafter.confidence_head(h, drafter.markov_head.markov_w1(prev)))


def test_block_mask_by_hand():
    """γ=2, anchors [1, 3], T=4: block 0 sees ctx t<1, block 1 sees t<3; each sees only its own block."""
    mask = block_attention_mask(torch.tensor([[1, 3]]), torch.tensor([[True, True]]), 4, 2)[0].int()
    expected = torch.tensor([[1, 0, 0, 0, 1, 1, 0, 0],
                             [1, 0, 0, 0, 1, 1, 0, 0],
                             [1, 1, 1, 0, 0, 0, 1, 1],
                             [1, 1, 1, 0, 0, 0, 1, 1]])
    assert torch.equal(mask, expected)


def test_sample_anchors_respect_loss_mask():
    loss_mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    pos, valid = sample_anchors(loss_mask, 8, torch.Generator().manual_seed(0))
    assert pos[0][valid[0]].tolist() == [2, 3]
    assert pos[1][valid[1]].tolist() == [1, 2, 3, 4]
    pos, valid = sample_anchors(loss_mask, 2, torch.Generator().manual_seed(0))
    assert valid.all() and all(p in (1, 2, 3, 4) for p in pos[1].tolist())


def test_vocab_subset_logits_are_columns_of_full_logits():
    drafter, _ = make_drafter("llama")
    h = torch.randn(2, drafter.config.block_size, drafter.config.hidden_size)
    prev = torch.randint(0, drafter.config.vocab_size, (2, drafter.config.block_size))
    sub = torch.tensor([1, 5, 7, 30])
    full, conf_full = teacher_forced_logits(drafter, h, prev)
    part, conf_part = teacher_forced_logits(drafter, h, prev, sub)
    torch.testing.assert_close(part, full[..., sub])
    torch.testing.assert_close(conf_part, conf_full)


@pytest.mark.parametrize("detached", [False, True])
def test_confidence_detached_stops_the_confidence_gradient_at_h(detached):
    """With `confidence_detached` the confidence logits carry no gradient to h (the backbone) but still
    to the confidence head and markov_w1; without it they reach h."""
    drafter, _ = make_drafter("qwen3", markov_head_type="vanilla")
    h = torch.randn(2, drafter.config.block_size, drafter.config.hidden_size, requires_grad=True)
    prev = torch.randint(0, drafter.config.vocab_size, (2, drafter.config.block_size))
    _, conf = teacher_forced_logits(drafter, h, prev, confidence_detached=detached)
    params = [drafter.confidence_head.proj.weight, drafter.markov_head.markov_w1.weight]
    g_h, g_proj, g_w1 = torch.autograd.grad(conf.sum(), [h, *params], allow_unused=True)
    assert (g_h is None) == detached
    if not detached:
        assert g_h.abs().sum() > 0
    assert g_proj.abs().sum() > 0 and g_w1.abs().sum() > 0
