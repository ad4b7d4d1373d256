"""Bad input to every op raises an error naming the tensor and the expected value; never a crash or
a silently wrong answer."""
from __future__ import annotations

import re

import pytest
import torch

from dspark_sglang import ops

i32 = torch.int32


def _verify_greedy_args(**over):
    args = dict(draft_ids=torch.zeros(2, 3, dtype=torch.long), target_ids=torch.zeros(2, 4, dtype=torch.long),
                verify_lens=torch.tensor([1, 3], dtype=i32))
    args.update(over)
    return args


def _verify_sampled_args(**over):
    args = dict(draft_ids=torch.zeros(2, 3, dtype=torch.long), draft_probs=torch.full((2, 3, 5), 0.2),
                target_probs=torch.full((2, 4, 5), 0.2), verify_lens=torch.tensor([1, 3], dtype=i32),
                is_greedy=torch.tensor([False, True]), seed=1, offset=0)
    args.update(over)
    return args


GREEDY_CASES = [
    (dict(draft_ids=torch.zeros(2, 3, dtype=torch.int32)), "draft_ids must have dtype Long"),
    (dict(verify_lens=torch.tensor([1, 3])), "verify_lens must have dtype Int"),
    (dict(target_ids=torch.zeros(2, 3, dtype=torch.long)), "target_ids.size(1) must be 4"),
    (dict(target_ids=torch.zeros(3, 4, dtype=torch.long)), "target_ids.size(0) must be 2"),
    (dict(verify_lens=torch.tensor([1, 4], dtype=i32)), "verify_lens must be in [0, 3]"),
    (dict(verify_lens=torch.tensor([-1, 0], dtype=i32)), "verify_lens[0] = -1"),
    (dict(verify_lens=torch.tensor([[1, 3]], dtype=i32)), "verify_lens must be 1-D"),
]


@pytest.mark.parametrize("over,message", GREEDY_CASES)
def test_verify_greedy_errors(over, message):
    with pytest.raises(RuntimeError, match=re.escape(message)):
        ops.verify_greedy(**_verify_greedy_args(**over))


SAMPLED_CASES = [
    (dict(draft_probs=torch.full((2, 3, 6), 0.2)), "draft_probs.size(2) must be 5 (V = target_probs.size(2)"),
    (dict(target_probs=torch.full((2, 3, 5), 0.2)), "target_probs.size(1) must be 4"),
    (dict(draft_probs=torch.full((2, 3, 5), 0.2, dtype=torch.float64), target_probs=torch.full((2, 4, 5), 0.2)),
     "target_probs must have the dtype of draft_probs"),
    (dict(draft_probs=torch.ones(2, 3, 5, dtype=torch.long), target_probs=torch.ones(2, 4, 5, dtype=torch.long)),
     "draft_probs must be float32, float16 or bfloat16"),
    (dict(is_greedy=torch.tensor([0, 1])), "is_greedy must have dtype Bool"),
    (dict(verify_lens=torch.tensor([0, 9], dtype=i32)), "verify_lens must be in [0, 3]"),
    (dict(draft_ids=torch.tensor([[0, 1, 5], [0, 0, 0]])), "draft_ids must be in [0, 5)"),
    (dict(seed=-4), "seed must be >= 0"),
    (dict(draft_ids=torch.zeros(2, 0, dtype=torch.long), draft_probs=torch.zeros(2, 0, 5),
          target_probs=torch.zeros(2, 1, 5), verify_lens=torch.zeros(2, dtype=i32)), "block size γ) must be >= 1"),
]


@pytest.mark.parametrize("over,message", SAMPLED_CASES)
def test_verify_sampled_errors(over, message):
    with pytest.raises(RuntimeError, match=re.escape(message)):
        ops.verify_sampled(**_verify_sampled_args(**over))


def test_confidence_survival_errors():
    logits = torch.zeros(2, 3)
    for args, message in [
        ((logits.double(), torch.ones(3), 0.5), "conf_logits must have dtype Float"),
        ((logits, torch.ones(4), 0.5), "sts_temperatures.size(0) must be 3"),
        ((logits, torch.tensor([1.0, 0.0, 1.0]), 0.5), "sts_temperatures must all be finite and > 0"),
        ((logits, torch.ones(3), 1.5), "threshold must be in [0, 1]"),
    ]:
        with pytest.raises(RuntimeError, match=re.escape(message)):
            ops.confidence_survival(*args)


def test_scheduler_errors():
    surv = torch.tensor([[0.9, 0.5], [0.8, 0.2]])
    table = torch.linspace(100, 50, 7)
    for call, message in [
        (lambda: ops.schedule_prefix(surv, table[:6], 0, 2), "sps_table needs at least R*(max_len+1)+1 = 7 entries"),
        (lambda: ops.schedule_prefix(surv, torch.tensor([1., 5, 6, 4, 3, 2, 1]), 0, 2),
         "sps_table must be non-increasing in B"),
        (lambda: ops.schedule_prefix(surv, -table, 0, 2), "must be finite and > 0"),
        (lambda: ops.schedule_prefix(surv, table, 0, 2, "greedy"), 'mode must be "early_stop" or "global"'),
        (lambda: ops.schedule_prefix(surv, table, 2, 1), "need 0 <= min_len <= max_len <= γ"),
        (lambda: ops.schedule_prefix(surv, table, 0, 3), "need 0 <= min_len <= max_len <= γ"),
        (lambda: ops.schedule_prefix(surv.double(), table, 0, 2), "survival must have dtype Float"),
        (lambda: ops.schedule_prefix(torch.tensor([[0.5, 0.9]]), table, 0, 2), "must be non-increasing along each row"),
        (lambda: ops.schedule_prefix(torch.tensor([[1.5, 0.9]]), table, 0, 2), "survival must lie in [0, 1]"),
        (lambda: ops.schedule_topk(surv, -1, 0, 2), "budget (total draft tokens to verify) must be >= 0"),
    ]:
        with pytest.raises(RuntimeError, match=re.escape(message)):
            call()


def test_extension_loads_the_shared_libstdcxx():
    """torch uses the shared libstdc++; a static copy inside _C (a compiler wrapper adding -static-libstdc++
    did this on a GPU host) truncates every number written into an error message, or crashes on it."""
    import shutil
    import subprocess

    from dspark_sglang.ops import native
    if native._C is None or shutil.which("readelf") is None:
        pytest.skip("needs the built extension and binutils' readelf")
    dynamic = subprocess.run(["readelf", "-d", native._C.__file__], capture_output=True, text=True, check=True).stdout
    assert "libstdc++.so" in dynamic


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to mix devices")
def test_device_mismatch_is_named():
    args = _verify_greedy_args(verify_lens=torch.tensor([1, 3], dtype=i32, device="cuda"))
    with pytest.raises(RuntimeError, match=re.escape("verify_lens must be on cpu")):
        ops.verify_greedy(**args)


def test_missing_native_op_without_fallback_raises(monkeypatch):
    monkeypatch.setattr(ops, "_NATIVE", {})
    monkeypatch.delenv("DSPARK_ALLOW_REFERENCE_OPS", raising=False)
    with pytest.raises(RuntimeError, match="DSPARK_ALLOW_REFERENCE_OPS=1"):
        ops.verify_greedy(**_verify_greedy_args())
    monkeypatch.setenv("DSPARK_ALLOW_REFERENCE_OPS", "1")
    acc, _ = ops.verify_greedy(**_verify_greedy_args())        # the reference answers instead
    assert acc.tolist() == [1, 3]
