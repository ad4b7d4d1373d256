"""The CPU host's fused RMSNorm / SiluAndMul / RotaryEmbedding (dspark_sglang/serving/cpu_host/fused_layers.py)
on SGLang's own layer classes, in fresh interpreters with the bootstrap active."""
from __future__ import annotations

from dspark_sglang.serving.cpu_host import bootstrap
from test.unit.test_sgl_kernel_cpu_bootstrap import needs_cpu_host, run_py, site_dir  # noqa: F401 (fixture)

LAYERS_CHECK = """
    import torch, torch.nn.functional as F
    from sglang.srt.layers.layernorm import RMSNorm
    from sglang.srt.layers.activation import SiluAndMul
    from sglang.srt.layers.rotary_embedding.base import RotaryEmbedding
    from dspark_sglang.serving.cpu_host import fused_layers

    torch.manual_seed(0)
    tol = dict(rtol=1.6e-2, atol=1e-2)
    for dtype in (torch.float32, torch.bfloat16):
        norm = RMSNorm(64, eps=1e-6).to(dtype)
        norm.weight.data = (torch.rand(64) + 0.5).to(dtype)
        x, res = torch.randn(5, 64).to(dtype), torch.randn(5, 64).to(dtype)
        ref = lambda v: v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight.float()
        before = fused_layers.calls()["fused"]
        torch.testing.assert_close(norm.forward_native(x.clone()).float(), ref(x.float()), **tol)
        total = x.float() + res.float()
        out, new_res = norm.forward_native(x.clone(), res.clone())
        torch.testing.assert_close(out.float(), ref(total), **tol)
        torch.testing.assert_close(new_res.float(), total, **tol)
        act = SiluAndMul()
        g = torch.randn(5, 96).to(dtype)
        torch.testing.assert_close(act.forward_native(g).float(), F.silu(g[:, :48].float()) * g[:, 48:].float(), **tol)
        rope = RotaryEmbedding(64, 64, 256, 10000, True, dtype)
        pos = torch.tensor([0, 3, 3, 200, 7])
        q, k = torch.randn(5, 3 * 64).to(dtype), torch.randn(5, 64).to(dtype)
        qo, ko = rope.forward_native(pos, q, k)
        cos, sin = rope.cos_sin_cache.float()[pos].chunk(2, dim=-1)
        def rot(t):
            t = t.float().view(5, -1, 64); a, b = t.chunk(2, dim=-1)
            c, s = cos[:, None], sin[:, None]
            return torch.cat((a * c - b * s, b * c + a * s), dim=-1).view(5, -1)
        torch.testing.assert_close(qo.float(), rot(q), **tol)
        torch.testing.assert_close(ko.float(), rot(k), **tol)
        assert fused_layers.calls()["fused"] - before == 4, fused_layers.calls()

    class OwnNative(RMSNorm):          # a subclass with its own forward_native keeps it
        def forward_native(self, x, residual=None, post_residual_addition=None, quant_linear=None):
            return x * 0 + 7
    own = OwnNative(8)
    assert torch.equal(own.forward_native(torch.ones(2, 8)), torch.full((2, 8), 7.0))
    norm = RMSNorm(8)
    before = fused_layers.calls()["native"]
    norm.forward_native(torch.randn(2, 8), torch.randn(2, 8), post_residual_addition=torch.randn(2, 8))
    assert fused_layers.calls()["native"] == before + 1           # an option the op does not model: native
    print("ok", fused_layers.calls())
"""


@needs_cpu_host
def test_layers_run_the_fused_ops_and_match_their_formulas(site_dir):
    r = run_py(site_dir, LAYERS_CHECK)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ok" in r.stdout


@needs_cpu_host
def test_off_switch_keeps_native_layers(site_dir):
    r = run_py(site_dir, """
        import torch
        from sglang.srt.layers.layernorm import RMSNorm
        from dspark_sglang.serving.cpu_host import fused_layers
        RMSNorm(8).forward_native(torch.randn(2, 8))
        print("calls", fused_layers.calls()["fused"] + fused_layers.calls()["native"])
    """, **{bootstrap.FUSED_LAYERS_ENV: "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-1] == "0"
