"""sgl_kernel.decode_attention_cpu / extend_attention_cpu (csrc/cpu/sgl_kernel/attention_ops.cpp) vs
torch SDPA on the gathered keys, in fp32 and bf16, over a paged KV pool with GQA."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dspark_sglang._C  # noqa: F401  (registers the sgl_kernel ops)
from dspark_sglang.serving.cpu_host import sgl_kernel_ops

ops = torch.ops.sgl_kernel
# fp32: our kernel and SDPA sum in different orders (float32 rounding over up to ~100 keys);
# bf16: the output is rounded to bf16 (8 bits of mantissa) after float32 math on both sides.
TOL = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
H, HK, D = 6, 2, 32


def _pool(dtype, pool_size=512):
    k = torch.randn(pool_size, HK, D).to(dtype)
    v = torch.randn(pool_size, HK, D).to(dtype)
    return k, v


def _table(seq_lens, pool_size=512, width=256, rows=10, consecutive=False):
    """req_to_token rows with distinct pool slots, shuffled or (as SGLang mostly allocates) consecutive per
    request; returns (table, req_pool_indices)."""
    table = torch.zeros(rows, width, dtype=torch.int32)
    slots = (torch.arange(sum(seq_lens)) if consecutive else torch.randperm(pool_size - 1)[: sum(seq_lens)]) + 1
    req = torch.randperm(rows)[: len(seq_lens)]
    off = 0
    for r, n in zip(req.tolist(), seq_lens):
        table[r, :n] = slots[off:off + n].int()
        off += n
    return table, req


def _sdpa(q, k, v, allowed, scale):
    """q [Lq,H,D], k/v [Lk,HK,D], allowed [Lq,Lk] -> [Lq,H,D] (float32 reference)."""
    qf = q.float().transpose(0, 1)
    kf = k.float().transpose(0, 1).repeat_interleave(H // HK, 0)
    vf = v.float().transpose(0, 1).repeat_interleave(H // HK, 0)
    return F.scaled_dot_product_attention(qf, kf, vf, attn_mask=allowed, scale=scale).transpose(0, 1)


def _manual(q, k, v, allowed, scale, logit_cap=0.0, sinks=None):
    qf = q.float().transpose(0, 1)
    kf = k.float().transpose(0, 1).repeat_interleave(H // HK, 0)
    vf = v.float().transpose(0, 1).repeat_interleave(H // HK, 0)
    s = qf @ kf.transpose(1, 2) * scale
    if logit_cap > 0:
        s = logit_cap * torch.tanh(s / logit_cap)
    s = s.masked_fill(~allowed, float("-inf"))
    if sinks is not None:
        s = torch.cat([s, sinks.float().view(H, 1, 1).expand(H, s.shape[1], 1)], -1)
        p = torch.softmax(s, -1)[..., :-1]
    else:
        p = torch.softmax(s, -1)
    return (p @ vf).transpose(0, 1)


@pytest.fixture(autouse=True, params=["auto", "narrow"])
def attention_panels(request, monkeypatch):
    """Every test runs twice: with the inner loops this CPU picks (16 lanes with AVX-512) and with the 8-lane
    loops of CPUs without it forced (DSPARK_CPU_ATTENTION_PANELS=narrow), so both are checked on any host."""
    monkeypatch.setenv("DSPARK_CPU_ATTENTION_PANELS", request.param)
    return request.param


def test_ops_are_ours():
    for op in ("decode_attention_cpu", "extend_attention_cpu"):
        assert sgl_kernel_ops.is_ours(op), sgl_kernel_ops.registration_site(op)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seq_lens", [[1], [5, 17, 64], [100, 3]])
@pytest.mark.parametrize("write_kv", [False, True])
def test_decode_matches_sdpa(dtype, seq_lens, write_kv):
    k_buf, v_buf = _pool(dtype)
    table, req = _table(seq_lens)
    bs, scale = len(seq_lens), D ** -0.5
    q = torch.randn(bs, H, D).to(dtype)
    seq = torch.tensor(seq_lens)
    loc = torch.stack([table[r, n - 1] for r, n in zip(req.tolist(), seq_lens)]).long()
    key = value = None
    if write_kv:       # the kernel stores the new token's K/V at loc before attending
        key, value = torch.randn(bs, HK * D).to(dtype), torch.randn(bs, HK * D).to(dtype)
    expected_k, expected_v = k_buf.clone(), v_buf.clone()
    if write_kv:
        expected_k[loc] = key.view(bs, HK, D)
        expected_v[loc] = value.view(bs, HK, D)
    out = torch.empty(bs, H, D, dtype=dtype)
    logits = torch.empty(bs, H, 8, D + 1)
    ops.decode_attention_cpu(q, k_buf, v_buf, 1.0, 1.0, out, key, value, loc, logits, table, req, seq,
                             scale, 0.0, False, 0, None, None)
    torch.testing.assert_close(k_buf, expected_k, rtol=0, atol=0)
    for b, (r, n) in enumerate(zip(req.tolist(), seq_lens)):
        idx = table[r, :n].long()
        ref = _sdpa(q[b:b + 1], expected_k[idx], expected_v[idx], torch.ones(1, n, dtype=torch.bool), scale)
        torch.testing.assert_close(out[b].float(), ref[0], rtol=0, atol=TOL[dtype])


def test_decode_window_cap_sinks_scales():
    dtype = torch.float32
    k_buf, v_buf = _pool(dtype)
    seq_lens = [40, 9]
    table, req = _table(seq_lens)
    q = torch.randn(2, H, D)
    sinks = torch.randn(H)
    out = torch.empty(2, H, D)
    window, cap, scale, ks, vs = 16, 5.0, 0.3, 0.5, 2.0
    ops.decode_attention_cpu(q, k_buf, v_buf, ks, vs, out, None, None, torch.zeros(2, dtype=torch.long),
                             torch.empty(0), table, req, torch.tensor(seq_lens), scale, cap, False, window,
                             None, sinks)
    for b, (r, n) in enumerate(zip(req.tolist(), seq_lens)):
        idx = table[r, :n].long()
        allowed = (n - 1 - torch.arange(n) < window).view(1, n)
        ref = _manual(q[b:b + 1], k_buf[idx] * ks, v_buf[idx] * vs, allowed, scale, cap, sinks)
        torch.testing.assert_close(out[b], ref[0], rtol=0, atol=TOL[dtype])


def _extend_case(dtype, seq_lens, ext_lens, consecutive=False):
    k_buf, v_buf = _pool(dtype)
    table, req = _table(seq_lens, consecutive=consecutive)
    total = sum(ext_lens)
    q = torch.randn(total, H, D).to(dtype)
    k_ext = torch.randn(total, HK, D).to(dtype)
    v_ext = torch.randn(total, HK, D).to(dtype)
    starts = torch.tensor([0] + list(torch.tensor(ext_lens).cumsum(0)[:-1].tolist()))
    # The backend writes the extend K/V into the pool before calling the kernel; do the same.
    for r, n, m, s in zip(req.tolist(), seq_lens, ext_lens, starts.tolist()):
        idx = table[r, n - m:n].long()
        k_buf[idx], v_buf[idx] = k_ext[s:s + m], v_ext[s:s + m]
    return k_buf, v_buf, table, req, q, k_ext, v_ext, starts


def _visible(n, m, causal, window=0):
    """[m, n] keys each of the last m positions sees: causal or all, within a sliding window when > 0."""
    qpos, kpos = torch.arange(n - m, n).view(m, 1), torch.arange(n).view(1, n)
    allowed = (kpos <= qpos) if causal else torch.ones(m, n, dtype=torch.bool)
    if window:
        allowed &= qpos - kpos < window
    return allowed


def _check_causal_extend(dtype, seq_lens, ext_lens, pass_extend_kv, consecutive):
    """Causal extend_attention_cpu (pool written first, extend K/V passed or not) against SDPA per request."""
    k_buf, v_buf, table, req, q, k_ext, v_ext, starts = _extend_case(dtype, seq_lens, ext_lens, consecutive)
    out = torch.empty_like(q)
    scale = D ** -0.5
    ops.extend_attention_cpu(q, k_ext if pass_extend_kv else None, v_ext if pass_extend_kv else None, out,
                             k_buf, v_buf, 1.0, 1.0, table, req, torch.tensor(seq_lens), torch.tensor(ext_lens),
                             starts, max(ext_lens), scale, 0.0, False, 0, None, None, None, True)
    for r, n, m, s in zip(req.tolist(), seq_lens, ext_lens, starts.tolist()):
        idx = table[r, :n].long()
        allowed = torch.arange(n).view(1, n) <= torch.arange(n - m, n).view(m, 1)
        ref = _sdpa(q[s:s + m], k_buf[idx], v_buf[idx], allowed, scale)
        torch.testing.assert_close(out[s:s + m].float(), ref, rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seq_lens,ext_lens", [([7], [7]), ([30, 12, 64], [5, 12, 1]), ([90, 50], [33, 50]),
                                               ([200, 70], [100, 65])])   # > 64 queries: the chunked GEMM path
@pytest.mark.parametrize("pass_extend_kv", [True, False])
@pytest.mark.parametrize("consecutive", [False, True])
def test_extend_causal_matches_sdpa(dtype, seq_lens, ext_lens, pass_extend_kv, consecutive):
    """Short extends (<= 64 queries: verify windows) take the batched small-extend path, reading the pool
    in place when a request's slots are consecutive; longer ones the chunked path."""
    _check_causal_extend(dtype, seq_lens, ext_lens, pass_extend_kv, consecutive)


@pytest.mark.parametrize("causal,window", [(True, 0), (True, 40), (False, 0), (False, 40)])
def test_extend_long_queries_vectorised_softmax(causal, window):
    """Extends of > 64 queries (prefill chunks) without cap or sinks take the vectorised row softmax:
    causal or not, with and without a sliding window, rows whose visible span crosses 16-lane blocks."""
    dtype = torch.float32
    seq_lens, ext_lens = [230, 97], [150, 97]
    k_buf, v_buf, table, req, q, k_ext, v_ext, starts = _extend_case(dtype, seq_lens, ext_lens)
    out = torch.empty_like(q)
    ops.extend_attention_cpu(q, k_ext, v_ext, out, k_buf, v_buf, 1.0, 1.0, table, req, torch.tensor(seq_lens),
                             torch.tensor(ext_lens), starts, 150, 0.3, 0.0, False, window, None, None, None, causal)
    for r, n, m, s in zip(req.tolist(), seq_lens, ext_lens, starts.tolist()):
        idx = table[r, :n].long()
        ref = _manual(q[s:s + m], k_buf[idx], v_buf[idx], _visible(n, m, causal, window), 0.3)
        torch.testing.assert_close(out[s:s + m], ref, rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extend_tree_mask_matches_sdpa(dtype):
    """TARGET_VERIFY as NGRAM runs it: n draft tokens per request, a [n, n] ancestor mask each."""
    n, seq_lens = 5, [20, 9, 33]
    k_buf, v_buf, table, req, q, k_ext, v_ext, starts = _extend_case(dtype, seq_lens, [n] * 3)
    masks = []
    for _ in seq_lens:
        parent = [-1] + [int(torch.randint(t, ())) for t in range(1, n)]
        m = torch.zeros(n, n, dtype=torch.bool)
        for t in range(n):
            a = t
            while a != -1:
                m[t, a], a = True, parent[a]
        masks.append(m)
    out = torch.empty_like(q)
    ops.extend_attention_cpu(q, k_ext, v_ext, out, k_buf, v_buf, 1.0, 1.0, table, req, torch.tensor(seq_lens),
                             torch.tensor([n] * 3), starts, n, D ** -0.5, 0.0, False, 0, None, None,
                             torch.stack(masks).view(-1), True)
    for i, (r, L) in enumerate(zip(req.tolist(), seq_lens)):
        idx = table[r, :L].long()
        allowed = torch.cat([torch.ones(n, L - n, dtype=torch.bool), masks[i]], 1)
        ref = _sdpa(q[i * n:(i + 1) * n], k_buf[idx], v_buf[idx], allowed, D ** -0.5)
        torch.testing.assert_close(out[i * n:(i + 1) * n].float(), ref, rtol=0, atol=TOL[dtype])


def test_extend_non_causal_window_cap_sinks():
    dtype = torch.float32
    seq_lens, ext_lens = [25, 40], [10, 40]
    k_buf, v_buf, table, req, q, k_ext, v_ext, starts = _extend_case(dtype, seq_lens, ext_lens)
    sinks = torch.randn(H)
    for causal, window in ((False, 0), (True, 7)):
        out = torch.empty_like(q)
        ops.extend_attention_cpu(q, k_ext, v_ext, out, k_buf, v_buf, 1.0, 1.0, table, req,
                                 torch.tensor(seq_lens), torch.tensor(ext_lens), starts, 40, 0.2, 3.0, False,
                                 window, None, sinks, None, causal)
        for r, n, m, s in zip(req.tolist(), seq_lens, ext_lens, starts.tolist()):
            idx = table[r, :n].long()
            ref = _manual(q[s:s + m], k_buf[idx], v_buf[idx], _visible(n, m, causal, window), 0.2, 3.0, sinks)
            torch.testing.assert_close(out[s:s + m], ref, rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])   # fp16: the generic fused loop
@pytest.mark.parametrize("pass_extend_kv", [True, False])
@pytest.mark.parametrize("consecutive", [False, True])
def test_extend_tiny_verify_windows_match_sdpa(dtype, pass_extend_kv, consecutive):
    """Batches whose extends are all <= 8 queries (ragged verify windows, here 1..8 rows over 0..150 prefix
    keys) take the fused per-(request, KV head) path."""
    seq_lens, ext_lens = [40, 9, 150, 3, 8], [8, 2, 5, 1, 8]
    _check_causal_extend(dtype, seq_lens, ext_lens, pass_extend_kv, consecutive)


def _long_case(dtype, seq_lens, heads, kv_heads, head_dim, index_dtype, seed=0):
    """A pool of sum(seq_lens) + 1 slots handed out shuffled, and a req_to_token of index_dtype."""
    gen = torch.Generator().manual_seed(seed)
    slots = sum(seq_lens) + 1
    k_buf = torch.randn(slots, kv_heads, head_dim, generator=gen).to(dtype)
    v_buf = torch.randn(slots, kv_heads, head_dim, generator=gen).to(dtype)
    table = torch.zeros(len(seq_lens) + 1, max(seq_lens) + 3, dtype=index_dtype)
    perm = torch.randperm(slots - 1, generator=gen) + 1
    off = 0
    for b, n in enumerate(seq_lens):           # request b lives in table row b + 1 (row 0 unused)
        table[b + 1, :n] = perm[off:off + n].to(index_dtype)
        off += n
    return k_buf, v_buf, table, torch.arange(1, len(seq_lens) + 1)


def _reference_rows(q, k, v, m, scale):
    """q [m, H, D] over k/v [n, HK, D] (float32, GQA, causal for the last m keys) -> [m, H, D]."""
    n, heads, kv_heads = k.shape[0], q.shape[1], k.shape[1]
    kf = k.float().transpose(0, 1).repeat_interleave(heads // kv_heads, 0)
    vf = v.float().transpose(0, 1).repeat_interleave(heads // kv_heads, 0)
    return F.scaled_dot_product_attention(q.float().transpose(0, 1), kf, vf, attn_mask=_visible(n, m, True),
                                          scale=scale).transpose(0, 1)


@pytest.mark.parametrize("dtype,dot16", [(torch.float32, "1"), (torch.bfloat16, "1"), (torch.bfloat16, "0")])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(9, 3, 64), (8, 1, 40)])
def test_long_context_rows_match_sdpa(dtype, dot16, index_dtype, heads, kv_heads, head_dim, monkeypatch):
    """Decode rows and verify windows over 1-3k keys (the coding-session shapes): many 64-key softmax tiles
    per task, keys of one (request, KV head) split over threads and merged, 1-8 rows x g heads = up to 64
    score lanes, a head_dim that is not a multiple of 16 (40) and both req_to_token index types; bf16 with
    the scores from bf16 pairs (where the CPU has AVX-512 BF16) and from float32 FMAs."""
    monkeypatch.setenv("DSPARK_CPU_ATTENTION_DOT16", dot16)
    seq_lens, ext_lens = [3000, 1100, 70, 1], [8, 1, 5, 1]
    k_buf, v_buf, table, req = _long_case(dtype, seq_lens, heads, kv_heads, head_dim, index_dtype)
    starts = torch.tensor([0, 8, 9, 14])
    q = torch.randn(sum(ext_lens), heads, head_dim).to(dtype)
    scale = head_dim ** -0.5
    threads = torch.get_num_threads()
    torch.set_num_threads(4)            # the split count depends on the thread count: force several splits
    try:
        out = torch.empty_like(q)
        ops.extend_attention_cpu(q, None, None, out, k_buf, v_buf, 1.0, 1.0, table, req, torch.tensor(seq_lens),
                                 torch.tensor(ext_lens), starts, 8, scale, 0.0, False, -1, None, None, None, True)
        q1 = torch.randn(len(seq_lens), heads, head_dim).to(dtype)
        out1 = torch.empty_like(q1)
        last = torch.stack([table[r, n - 1] for r, n in zip(req.tolist(), seq_lens)]).long()
        ops.decode_attention_cpu(q1, k_buf, v_buf, 1.0, 1.0, out1, None, None, last, torch.empty(0), table, req,
                                 torch.tensor(seq_lens), scale, 0.0, False, -1, None, None)
    finally:
        torch.set_num_threads(threads)
    for b, (r, n, m, s) in enumerate(zip(req.tolist(), seq_lens, ext_lens, starts.tolist())):
        idx = table[r, :n].long()
        ref = _reference_rows(q[s:s + m], k_buf[idx], v_buf[idx], m, scale)
        torch.testing.assert_close(out[s:s + m].float(), ref, rtol=0, atol=TOL[dtype])
        ref1 = _reference_rows(q1[b:b + 1], k_buf[idx], v_buf[idx], 1, scale)
        torch.testing.assert_close(out1[b:b + 1].float(), ref1, rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_short_rows_tree_mask_and_non_causal_over_long_prefixes(dtype):
    """Verify windows as NGRAM sends them (a packed [m, m] tree mask per request, here including a row that
    hides its own token) and non-causal short extends, over prefixes of 0-1500 keys (tiles and splits)."""
    heads, kv_heads, head_dim = 9, 3, 64
    seq_lens, ext_lens = [1508, 6, 300], [8, 6, 3]
    k_buf, v_buf, table, req = _long_case(dtype, seq_lens, heads, kv_heads, head_dim, torch.int64, seed=1)
    starts = torch.tensor([0, 8, 14])
    q = torch.randn(sum(ext_lens), heads, head_dim).to(dtype)
    gen = torch.Generator().manual_seed(2)
    masks = [torch.rand(m, m, generator=gen) < 0.6 for m in ext_lens]
    masks[1][0] = False                          # row 0 of a request with no prefix sees nothing: zeros
    masks[0][3, 3] = False                       # a row hiding its own token still sees the prefix
    scale = head_dim ** -0.5
    packed = torch.cat([mk.reshape(-1) for mk in masks])
    for tree in (True, False):
        out = torch.empty_like(q)
        ops.extend_attention_cpu(q, None, None, out, k_buf, v_buf, 1.0, 1.0, table, req, torch.tensor(seq_lens),
                                 torch.tensor(ext_lens), starts, 8, scale, 0.0, False, -1, None, None,
                                 packed if tree else None, tree)
        for b, (r, n, m, s) in enumerate(zip(req.tolist(), seq_lens, ext_lens, starts.tolist())):
            idx = table[r, :n].long()
            fresh = masks[b] if tree else torch.ones(m, m, dtype=torch.bool)
            allowed = torch.cat([torch.ones(m, n - m, dtype=torch.bool), fresh], 1)
            qf = q[s:s + m].float().transpose(0, 1)
            kf = k_buf[idx].float().transpose(0, 1).repeat_interleave(heads // kv_heads, 0)
            vf = v_buf[idx].float().transpose(0, 1).repeat_interleave(heads // kv_heads, 0)
            scores = (qf @ kf.transpose(1, 2) * scale).masked_fill(~allowed, float("-inf"))
            ref = torch.nan_to_num(torch.softmax(scores, -1)) @ vf            # rows seeing nothing: zeros
            torch.testing.assert_close(out[s:s + m].float(), ref.transpose(0, 1), rtol=0, atol=TOL[dtype])
        if tree:
            assert out[8].abs().max() == 0


def test_long_context_rows_ignore_scores_far_below_the_max():
    """Keys whose scores sit far below a few dominant ones contribute ~0 (the kernel's exp clamps at
    e^-87 instead of underflowing to NaN), and a context whose first tile is dominated by a later one is
    rescaled correctly (online softmax)."""
    seq_lens, heads, kv_heads, head_dim = [700], 2, 1, 16
    k_buf, v_buf, table, req = _long_case(torch.float32, seq_lens, heads, kv_heads, head_dim, torch.int64)
    idx = table[1, :700].long()
    k_buf[idx[600]] = 30.0                  # one late key dominates every query
    q = torch.full((1, heads, head_dim), 1.0)
    out = torch.empty_like(q)
    ops.decode_attention_cpu(q, k_buf, v_buf, 1.0, 1.0, out, None, None, idx[-1:], torch.empty(0), table, req,
                             torch.tensor(seq_lens), 1.0, 0.0, False, -1, None, None)
    ref = _reference_rows(q, k_buf[idx], v_buf[idx], 1, 1.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=0, atol=TOL[torch.float32])
    torch.testing.assert_close(out[0, 0], v_buf[idx[600], 0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype,seq_lens,dot16", [(torch.float32, [25, 40], "1"), (torch.bfloat16, [250, 40], "0"),
                                                  (torch.bfloat16, [250, 40], "1")])
def test_extend_kv_scales_apply_to_pool_rows_only(dtype, seq_lens, dot16, monkeypatch):
    """Verify windows with KV scales: pool rows are scaled, fresh rows passed as k/v_extend are not; float32,
    and bf16 with both score paths (the bf16-pair path scales each key's score after the dot and folds v_scale
    into a pool key's weight)."""
    monkeypatch.setenv("DSPARK_CPU_ATTENTION_DOT16", dot16)
    ext_lens = [3, 8] if dtype == torch.float32 else [5, 8]
    k_buf, v_buf, table, req, q, k_ext, v_ext, starts = _extend_case(dtype, seq_lens, ext_lens)
    ks, vs = 0.5, 2.0
    for pass_ext in (False, True):
        out = torch.empty_like(q)
        ops.extend_attention_cpu(q, k_ext if pass_ext else None, v_ext if pass_ext else None, out, k_buf, v_buf,
                                 ks, vs, table, req, torch.tensor(seq_lens), torch.tensor(ext_lens), starts, 8, 0.2,
                                 0.0, False, 0, None, None, None, True)
        for r, n, m, s in zip(req.tolist(), seq_lens, ext_lens, starts.tolist()):
            idx = table[r, :n].long()
            k_all, v_all = k_buf[idx].float() * ks, v_buf[idx].float() * vs
            if pass_ext:
                k_all[n - m:], v_all[n - m:] = k_ext[s:s + m].float(), v_ext[s:s + m].float()
            allowed = torch.arange(n).view(1, n) <= torch.arange(n - m, n).view(m, 1)
            ref = _manual(q[s:s + m].float(), k_all, v_all, allowed, 0.2)
            torch.testing.assert_close(out[s:s + m].float(), ref, rtol=0, atol=TOL[dtype])


def _has_avx512_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512_bf16" in f.read()
    except OSError:
        return False


@pytest.mark.skipif(not _has_avx512_bf16(), reason="the bf16-pair score path needs a CPU with AVX-512 BF16")
def test_bf16_scores_use_bf16_pair_products_where_the_cpu_has_them(monkeypatch):
    """Proof that the bf16-pair path (vdpbf16ps) ran: it treats denormal inputs as zero, float32 FMAs do not.
    Key 0 holds a denormal 2^-130 and sm_scale is 2^126, so its score is 2^-4 with float32 FMAs (outputs
    softmax([1/16, 0]) · V) and exactly 0 with bf16 pairs (outputs the plain mean of the two one-hot values,
    exact in bf16 weights too)."""
    dim = 16                                                                   # the pair path needs Dv % 16 == 0
    q = torch.zeros(1, 1, dim, dtype=torch.bfloat16)                           # [1 row, 1 head, D]
    q[0, 0, 0] = 1.0
    k_buf = torch.zeros(3, 1, dim, dtype=torch.bfloat16)                      # slot 0 unused
    k_buf[1, 0, 0] = 2.0 ** -130
    assert k_buf[1, 0, 0].item() == 2.0 ** -130                                 # representable as bf16
    v_buf = torch.zeros(3, 1, dim, dtype=torch.bfloat16)
    v_buf[1, 0, 0] = v_buf[2, 0, 1] = 1.0
    table = torch.tensor([[1, 2]], dtype=torch.int32)
    outs = {}
    for dot16 in ("0", "1"):
        monkeypatch.setenv("DSPARK_CPU_ATTENTION_DOT16", dot16)
        out = torch.empty(1, 1, dim, dtype=torch.bfloat16)
        ops.decode_attention_cpu(q, k_buf, v_buf, 1.0, 1.0, out, None, None, torch.tensor([2]), torch.empty(0),
                                 table, torch.tensor([0]), torch.tensor([2]), 2.0 ** 126, 0.0, False, -1, None, None)
        outs[dot16] = out.float().flatten()[:2]
    w = torch.softmax(torch.tensor([2.0 ** -4, 0.0]), 0)
    torch.testing.assert_close(outs["0"], w.to(torch.bfloat16).float(), rtol=0, atol=0)
    torch.testing.assert_close(outs["1"], torch.tensor([0.5, 0.5]), rtol=0, atol=0)


@pytest.mark.parametrize("consecutive", [False, True])
def test_extend_small_non_causal_and_kv_scales(consecutive):
    """The small-extend path without a mask, and with KV scales (pool rows gathered and scaled)."""
    dtype = torch.float32
    seq_lens, ext_lens = [25, 40], [10, 8]
    k_buf, v_buf, table, req, q, k_ext, v_ext, starts = _extend_case(dtype, seq_lens, ext_lens, consecutive)
    for causal, ks, vs in ((False, 1.0, 1.0), (True, 0.5, 2.0)):
        out = torch.empty_like(q)
        ops.extend_attention_cpu(q, None, None, out, k_buf, v_buf, ks, vs, table, req, torch.tensor(seq_lens),
                                 torch.tensor(ext_lens), starts, 10, 0.2, 0.0, False, 0, None, None, None, causal)
        for r, n, m, s in zip(req.tolist(), seq_lens, ext_lens, starts.tolist()):
            idx = table[r, :n].long()
            ref = _manual(q[s:s + m], k_buf[idx] * ks, v_buf[idx] * vs, _visible(n, m, causal), 0.2)
            torch.testing.assert_close(out[s:s + m], ref, rtol=0, atol=TOL[dtype])


def test_cross_attention_is_refused():
    k_buf, v_buf = _pool(torch.float32)
    with pytest.raises(RuntimeError, match="decode_attention_cpu.*cross attention"):
        ops.decode_attention_cpu(torch.randn(1, H, D), k_buf, v_buf, 1.0, 1.0, torch.empty(1, H, D), None, None,
                                 torch.zeros(1, dtype=torch.long), torch.empty(0), torch.zeros(1, 4).int(),
                                 torch.tensor([0]), torch.tensor([1]), 1.0, 0.0, True, 0, None, None)
