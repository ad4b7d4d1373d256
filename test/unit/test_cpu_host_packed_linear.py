"""The CPU host's packed linear layers and lm_head (dspark_sglang/serving/cpu_host/packed_linear.py), in fresh
interpreters with the bootstrap active, against SGLang's own classes."""
from __future__ import annotations

import pytest
import torch

from dspark_sglang.ops import native
from dspark_sglang.serving.cpu_host import bootstrap
from test.unit.test_sgl_kernel_cpu_bootstrap import needs_cpu_host, run_py, site_dir  # noqa: F401 (fixture)

needs_vector_face = pytest.mark.skipif(native.packed_linear_backend(torch.bfloat16) == "generic"
                                       and native.packed_linear_backend(torch.float32) == "generic",
                                       reason="packed_linear has no vector face on this CPU")

LINEAR_CHECK = """
    import torch, torch.nn.functional as F
    from sglang.srt.layers.quantization.unquant import UnquantizedLinearMethod
    from dspark_sglang.serving.cpu_host import packed_linear

    torch.manual_seed(0)
    method = UnquantizedLinearMethod()
    for dtype in (torch.bfloat16, torch.float32):
        for n, k, expect_packed in ((96, 64, True), (20, 64, False)):
            layer = torch.nn.Module()
            weight = torch.randn(n, k, dtype=dtype)
            layer.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
            layer.weight.custom_attr = "kept"
            param = layer.weight
            method.process_weights_after_loading(layer)
            packed = getattr(layer, packed_linear.PACKED_ATTR, None) is not None
            assert packed == expect_packed, (dtype, n, packed)
            assert layer.weight is param and layer.weight.shape == (n, k) and layer.weight.custom_attr == "kept"
            assert torch.equal(layer.weight, weight) != packed          # packed weights are re-laid out
            x, bias = torch.randn(2, 3, k, dtype=dtype), torch.randn(n, dtype=dtype)
            y = method.apply(layer, x, bias)
            ref = F.linear(x.float(), weight.float(), bias.float()).to(dtype)
            assert y.shape == (2, 3, n) and y.dtype == dtype
            torch.testing.assert_close(y.float(), ref.float(), rtol=2e-2, atol=5e-2)
            method.process_weights_after_loading(layer)                 # a second call must not pack twice
            torch.testing.assert_close(method.apply(layer, x, bias), y, rtol=0, atol=0)
    print("stats", packed_linear.stats())
"""


@needs_cpu_host
@needs_vector_face
def test_linear_layers_pack_and_match_f_linear(site_dir):
    r = run_py(site_dir, LINEAR_CHECK)
    assert r.returncode == 0, r.stderr[-3000:]
    # 2 packable layers packed once; the 2 others left to SGLang at each of their 2 post-load calls
    assert "'packed_layers': 2" in r.stdout and "'skipped_layers': 4" in r.stdout, r.stdout


@needs_cpu_host
def test_off_switch_leaves_sglang_linear_alone(site_dir):
    r = run_py(site_dir, """
        import torch
        from sglang.srt.layers.quantization.unquant import UnquantizedLinearMethod
        from dspark_sglang.serving.cpu_host import packed_linear
        layer = torch.nn.Module()
        layer.weight = torch.nn.Parameter(torch.randn(32, 32), requires_grad=False)
        UnquantizedLinearMethod().process_weights_after_loading(layer)
        print("packed", getattr(layer, packed_linear.PACKED_ATTR, None))
    """, **{bootstrap.PACKED_LINEAR_ENV: "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-1] == "None"


@needs_cpu_host
def test_bad_switch_value_is_named(site_dir):
    r = run_py(site_dir, "from sglang.srt.layers.quantization import unquant", **{bootstrap.PACKED_LINEAR_ENV: "yes"})
    assert r.returncode != 0
    assert "DSPARK_CPU_HOST_PACKED_LINEAR must be 0 or 1; got 'yes'" in r.stderr


@needs_cpu_host
@needs_vector_face
def test_lm_head_runs_packed_copy(site_dir):
    """The plain lm_head matmul goes through a packed copy made once; the embedding keeps its weight."""
    r = run_py(site_dir, """
        import torch
        from sglang.srt.layers import logits_processor as lp
        from dspark_sglang.serving.cpu_host import packed_linear

        torch.manual_seed(0)
        head = torch.nn.Module()
        weight = torch.randn(160, 64, dtype=torch.bfloat16)
        head.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
        proc = lp.LogitsProcessor.__new__(lp.LogitsProcessor)
        proc.use_fp32_lm_head = False
        proc.use_fp32_lm_head_output = False
        proc.rl_on_policy_target = None
        hidden = torch.randn(5, 64, dtype=torch.bfloat16)
        logits = proc._compute_lm_head(hidden, head)
        copy = getattr(head, packed_linear.PACKED_LM_HEAD_ATTR)
        assert isinstance(copy, torch.Tensor) and torch.equal(head.weight, weight)
        torch.testing.assert_close(logits.float(), (hidden.float() @ weight.float().T), rtol=2e-2, atol=5e-2)
        assert proc._compute_lm_head(hidden, head) is not None and getattr(head, packed_linear.PACKED_LM_HEAD_ATTR) is copy
        odd = torch.nn.Module()
        odd.weight = torch.nn.Parameter(torch.randn(20, 64, dtype=torch.bfloat16), requires_grad=False)
        torch.testing.assert_close(proc._compute_lm_head(hidden, odd).float(), hidden.float() @ odd.weight.float().T,
                                   rtol=2e-2, atol=5e-2)
        print("odd", getattr(odd, packed_linear.PACKED_LM_HEAD_ATTR))
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-1] == "False"      # not packable: SGLang's matmul, remembered
