"""plain_decode_forward (dspark_sglang.serving.plain_forward): the batch the target sees in a plain step,
and the batch the scheduler gets back. The end-to-end check (plain steps decode exactly like no
speculation) is test_plain_steps_match_no_speculation in test/e2e/test_server_dspark.py."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("sglang")
from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode, ForwardMode  # noqa: E402

from dspark_sglang.serving.plain_forward import plain_decode_forward  # noqa: E402


def _batch():
    return SimpleNamespace(forward_mode=ForwardMode.DECODE, input_ids=None, out_cache_loc=None,
                           spec_info="draft-input", req_pool_indices=torch.tensor([1, 0]),
                           seq_lens=torch.tensor([3, 5]), seq_lens_cpu=torch.tensor([3, 5]),
                           orig_seq_lens=torch.tensor([3, 5], dtype=torch.int32), seq_lens_sum=8)


class _Target:
    """Records what the batch looks like during the forward."""

    def __init__(self, fail: bool = False) -> None:
        self.seen, self.fail = None, fail

    def forward_batch_generation(self, batch, is_verify, capture_hidden_mode):
        self.seen = dict(mode=batch.forward_mode, ids=batch.input_ids.tolist(), loc=batch.out_cache_loc.tolist(),
                         spec=batch.spec_info, lens=batch.seq_lens.tolist(), lens_cpu=batch.seq_lens_cpu.tolist(),
                         orig=batch.orig_seq_lens.tolist(), total=batch.seq_lens_sum, verify=is_verify,
                         capture=capture_hidden_mode)
        if self.fail:
            raise RuntimeError("forward failed")
        return SimpleNamespace(logits_output="logits")


def test_target_sees_a_decode_batch_over_the_anchors():
    req_to_token = torch.arange(40).reshape(2, 20) + 100          # slot of (request row, position)
    batch, target = _batch(), _Target()
    out = plain_decode_forward(target, batch, torch.tensor([11, 22]), torch.tensor([3, 5]), req_to_token)
    assert out == "logits"
    assert target.seen == dict(mode=ForwardMode.DECODE, ids=[11, 22], loc=[120 + 3, 100 + 5], spec=None,
                               lens=[4, 6], lens_cpu=[4, 6], orig=[4, 6], total=None, verify=True,
                               capture=CaptureHiddenMode.FULL)


@pytest.mark.parametrize("fail", [False, True])
def test_batch_is_restored_even_when_the_forward_fails(fail):
    batch, target = _batch(), _Target(fail=fail)
    before = dict(vars(batch))
    if fail:
        with pytest.raises(RuntimeError):
            plain_decode_forward(target, batch, torch.tensor([1, 2]), torch.tensor([3, 5]), torch.zeros(2, 20))
    else:
        plain_decode_forward(target, batch, torch.tensor([1, 2]), torch.tensor([3, 5]), torch.zeros(2, 20))
    assert vars(batch).keys() == before.keys()
    for name, value in before.items():
        assert getattr(batch, name) is value, name
