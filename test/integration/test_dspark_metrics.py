"""DSpark serving metrics and SPS/STS helpers of the worker (no server)."""
from __future__ import annotations

import json

import pytest
import torch

from dspark_sglang.serving import sps_profile
from dspark_sglang.serving.metrics import WINDOW, DSparkMetrics


def test_metrics_hand_worked():
    """Two requests, γ=3: survivals [[.9,.8,.5],[.6,.3,.1]], ℓ=[3,1], accepted=[2,0].
    τ = (3 + 1)/2 = 2; budget = (3 + 1)/2 = 2; verified slots: .9 .8 .5 | .6 (Σ 2.8) vs labels 1 1 0 | 0 (Σ 2):
    calibration error |2.8 − 2| / 4 = 0.2."""
    m = DSparkMetrics(enabled=False, log_interval=0, gamma=3)
    m.record_step(survival=torch.tensor([[0.9, 0.8, 0.5], [0.6, 0.3, 0.1]]), verify_lens=torch.tensor([3, 1]),
                  accepted=torch.tensor([2, 0]), num_rows=6, predicted_seconds=0.1, verify_seconds=0.05,
                  step_seconds=0.2, draft_seconds=0.03)
    s = m.snapshot()
    assert s["mean_accept_length"] == pytest.approx(2.0)
    assert s["mean_verify_budget"] == pytest.approx(2.0)
    assert s["survival_calibration_error"] == pytest.approx(0.2)
    assert (s["predicted_step_seconds"], s["measured_step_seconds"]) == (pytest.approx(0.1), pytest.approx(0.2))
    assert (s["measured_verify_seconds"], s["measured_draft_seconds"]) == (pytest.approx(0.05), pytest.approx(0.03))
    assert "dspark τ: 2.00" in m.log_suffix() and "(draft 30.0, verify 50.0)" in m.log_suffix()
    m.reset()
    assert m.snapshot()["steps"] == 0


def test_metrics_window_rolls():
    """Past WINDOW steps the means are those of the last WINDOW steps only (running sums, evicted steps
    subtracted): step i has 1 + i % 3 requests, all accepting i % 2 drafts of 2 verified, step time i ms;
    between-step times are recorded only where given (every other step)."""
    m = DSparkMetrics(enabled=False, log_interval=0, gamma=2)
    total = 2 * WINDOW + 37                      # the between-step window (every other step) rolls too
    for i in range(total):
        reqs = 1 + i % 3
        m.record_step(survival=torch.full((reqs, 2), 0.5), verify_lens=torch.full((reqs,), 2),
                      accepted=torch.full((reqs,), i % 2), num_rows=3 * reqs, predicted_seconds=0.0,
                      verify_seconds=0.0, step_seconds=i * 1e-3, drafted=i % 4 != 0,
                      between_seconds=i * 1e-4 if i % 2 else None)
    last = range(total - WINDOW, total)
    reqs = sum(1 + i % 3 for i in last)
    s = m.snapshot()
    assert s["steps"] == total
    assert s["mean_accept_length"] == pytest.approx(sum((1 + i % 3) * (1 + i % 2) for i in last) / reqs)
    assert s["measured_step_seconds"] == pytest.approx(sum(i * 1e-3 for i in last) / WINDOW)
    assert s["drafted_step_fraction"] == pytest.approx(sum(i % 4 != 0 for i in last) / WINDOW)
    between = [i * 1e-4 for i in range(total) if i % 2][-WINDOW:]
    assert len(between) == WINDOW and s["measured_between_steps_seconds"] == pytest.approx(sum(between) / WINDOW)
    drafted = [i for i in range(total) if i % 4 != 0][-WINDOW:]      # calibration: drafted steps only
    labels = sum((1 + i % 3) * (i % 2) for i in drafted)
    slots = sum(2 * (1 + i % 3) for i in drafted)
    assert s["survival_calibration_error"] == pytest.approx(abs(0.5 * slots - labels) / slots)
    assert "between steps: " in m.log_suffix()


def test_load_sts(tmp_path):
    assert sps_profile.load_sts(None, 3).tolist() == [1.0, 1.0, 1.0]
    path = tmp_path / "sts.json"
    path.write_text(json.dumps({"temperatures": [0.5, 1.0, 2.0, 4.0]}))
    assert sps_profile.load_sts(str(path), 3).tolist() == [0.5, 1.0, 2.0]
    path.write_text(json.dumps({"temperatures": [0.5, -1.0, 2.0]}))
    with pytest.raises(ValueError, match="--dspark-sts"):
        sps_profile.load_sts(str(path), 3)
    path.write_text(json.dumps([0.25, 3.0, 2.0]))            # fit_sts.py's format, found in the drafter folder
    assert sps_profile.load_sts(None, 3, str(tmp_path)).tolist() == [0.25, 3.0, 2.0]
    assert sps_profile.load_sts("off", 3, str(tmp_path)).tolist() == [1.0, 1.0, 1.0]
    assert sps_profile.load_sts(None, 3, str(tmp_path / "elsewhere")).tolist() == [1.0, 1.0, 1.0]


def test_cached_profile_check():
    """A cache slower than the start-up check by > 1.25x at any checked B is stale (profiled on a busy
    host); one whose points moved apart by > 1.25x is reshaped (both re-profile); a check uniformly slower than the cache
    means the host is busy now; within 1.25x both ways it is ok."""
    points = {"batch_rows": [1, 4, 8, 16], "step_seconds": [0.020, 0.021, 0.024, 0.032]}
    assert sps_profile.cached_step_seconds(points, 1) == 0.020
    assert sps_profile.cached_step_seconds(points, 5) == 0.024          # the next measured B at or above
    assert sps_profile.cached_step_seconds(points, 64) == 0.032         # past the last: the largest
    assert sps_profile.check_cached(points, {1: 0.021, 8: 0.023}) == "ok"
    assert sps_profile.check_cached(points, {1: 0.020, 8: 0.018}) == "stale"      # 0.024 / 0.018 = 1.33
    assert sps_profile.check_cached(points, {1: 0.0063, 8: 0.024}) == "stale"
    assert sps_profile.check_cached(points, {1: 0.026, 8: 0.030}) == "busy"       # 0.020 / 0.026 < 1 / 1.25
    assert sps_profile.check_cached(points, {1: 0.026, 8: 0.024}) == "reshaped"   # B=1 slower, B=8 not
    assert sps_profile.check_cached(points, {1: 0.026, 8: 0.018}) == "stale"      # stale wins: re-measure
    assert sps_profile.check_cached(points, {1: 0.024, 8: 0.024}, ratio=1.5) == "ok"
    # the points moved apart (extra rows cost more than when profiled, B = 1 unchanged): the shape is stale
    assert sps_profile.check_cached(points, {1: 0.020, 8: 0.036}) == "reshaped"    # 0.024 / 0.036 = 0.67
    assert sps_profile.check_cached(points, {1: 0.026, 8: 0.031}) == "busy"        # both slower alike


def test_profile_shapes_and_cache_key():
    """B = 1, W/2, W for one request, then full blocks for 2, 4, 8 requests."""
    assert sps_profile.sample_points(5, 8) == [(1, 1), (1, 2), (1, 5), (2, 5), (4, 5), (8, 5)]
    k1 = sps_profile.cache_key("/m", "torch.float32", "cpu", "0.5.23", 5)
    assert k1 != sps_profile.cache_key("/m", "torch.bfloat16", "cpu", "0.5.23", 5)
    assert k1 != sps_profile.cache_key("/m", "torch.float32", "cpu", "0.5.24", 5)
    assert k1 == sps_profile.cache_key("/m", "torch.float32", "cpu", "0.5.23", 5)
    assert k1 != sps_profile.cache_key("/m", "torch.float32", "cpu", "0.5.23", 5, "123:456")   # rebuilt kernels
    import dspark_sglang._C  # noqa: F401

    size, mtime, packed, fused, faces, split = sps_profile.extension_build().split(":")
    assert int(size) > 0 and int(mtime) > 0 and packed.startswith("packed") and fused in ("fused0", "fused1")
    assert faces.startswith("faces") and faces.count("/") == 1 and float(split.removeprefix("split")) > 0


def test_cache_key_follows_the_thread_split_size():
    """A profile measured with calls split over threads at another size is not reused (fresh interpreters)."""
    import subprocess
    import sys

    code = ("import torch, dspark_sglang._C; from dspark_sglang.serving import sps_profile; "
            "print(sps_profile.extension_build().split(':')[-1])")
    splits = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={**__import__("os").environ, "DSPARK_CPU_LINEAR_PARALLEL_MACS": v}).stdout.strip()
              for v in ("1000", "4e6")]
    assert splits == ["split1000", "split4e+06"]


def test_context_probe_length_fits_the_pools():
    """The context probe's requests fit the KV pool and a request-pool row; too small a pool: no probe."""
    from types import SimpleNamespace

    def worker(rows: int, max_context: int, pool_tokens: int):
        req_to_token = torch.zeros(rows, max_context, dtype=torch.int32)
        runner = SimpleNamespace(req_to_token_pool=SimpleNamespace(req_to_token=req_to_token),
                                 max_total_num_tokens=pool_tokens)
        return SimpleNamespace(model_runner=runner)

    assert sps_profile.probe_length(worker(64, 8192, 1 << 15), width=16) == sps_profile.CONTEXT_PROBE_LEN
    assert sps_profile.probe_length(worker(64, 1024, 1 << 15), width=16) == 1024 - 17       # a row's width
    assert sps_profile.probe_length(worker(64, 8192, 4001), width=16) == 1000                # 4 requests in the pool
    assert sps_profile.probe_length(worker(64, 8192, 800), width=16) == 0                    # < 4 × 64 tokens each
    assert sps_profile.probe_length(worker(2, 8192, 1 << 15), width=16) == 0                 # < 4 request rows
    assert sps_profile.probe_length(worker(64, 8192, 0), width=16) == 0                      # pool size unknown


def test_context_cost_in_a_profile_file():
    """A profile's optional "context_cost": read when present (None when absent); a bad one names the file,
    the field and the fix."""
    points = {"batch_rows": [1], "step_seconds": [0.03]}
    assert sps_profile.context_cost_of(points, "p.json") is None
    cost = {"per_token_one_row": 3e-6, "per_token_full": 9e-6, "width": 16, "base_context": 64}
    assert sps_profile.context_cost_of(dict(points, context_cost=cost), "p.json").per_token_full == 9e-6
    with pytest.raises(ValueError, match=r"p.json: bad \"context_cost\".*base_context.*profile again"):
        sps_profile.context_cost_of(dict(points, context_cost={"per_token_one_row": 1e-6, "per_token_full": 1e-6,
                                                               "width": 16}), "p.json")


def test_context_probe_restores_the_request_rows_even_when_a_forward_fails():
    """The probe points request-pool rows at slots of their own for its dummy forwards and puts them back,
    also when the forward raises (the server then fails at start, but leaves no row pointing at free slots)."""
    pytest.importorskip("sglang")
    from types import SimpleNamespace

    req_to_token = torch.arange(6 * 300, dtype=torch.int32).view(6, 300) % 7          # [rows, max_context]
    before = req_to_token.clone()
    seen = {}

    def forward(fb):
        seen["rows"] = req_to_token[:4, :256].clone()
        seen["pool_rows"] = fb.req_pool_indices.tolist()
        raise RuntimeError("boom")

    plan = SimpleNamespace(bind=lambda fb, translator: None)
    runner = SimpleNamespace(req_to_token_pool=SimpleNamespace(req_to_token=req_to_token), spec_algorithm=None,
                             kv_index_translator=SimpleNamespace(own_plan=lambda fb: plan), forward=forward,
                             max_total_num_tokens=1 << 14)
    worker = SimpleNamespace(model_runner=runner, device="cpu", num_draft_tokens=8)
    with pytest.raises(RuntimeError, match="boom"):
        sps_profile._time_verify(worker, 4, 8, repeats=1, context_len=256, own_slots=True)
    assert seen["pool_rows"] == [0, 1, 2, 3]
    assert seen["rows"].tolist() == (1 + torch.arange(4 * 256).view(4, 256)).tolist()   # distinct, never slot 0
    assert torch.equal(req_to_token, before)
