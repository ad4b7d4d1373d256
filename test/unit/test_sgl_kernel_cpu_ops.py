"""sgl_kernel.*_cpu bookkeeping and tree ops (csrc/cpu/sgl_kernel/) vs small pure-torch references.

These are the ops SGLang's CPU engine calls through torch.ops.sgl_kernel; dspark_sglang._C registers
them (see dspark_sglang/serving/cpu_host/). Integer outputs must match exactly.
"""
from __future__ import annotations

import random

import pytest
import torch
from torch.library import opcheck

import dspark_sglang._C  # noqa: F401  (registers the sgl_kernel ops)
from dspark_sglang.serving.cpu_host import sgl_kernel_ops

ops = torch.ops.sgl_kernel


@pytest.mark.parametrize("op", sgl_kernel_ops.CPU_OPS)
def test_op_is_our_native_cpu_kernel(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"sgl_kernel::{op}", "CPU")
    site = sgl_kernel_ops.registration_site(op)
    assert site is not None and "csrc/cpu/sgl_kernel/" in site, site


# ---- KV pool bookkeeping -------------------------------------------------------------------------

@pytest.mark.parametrize("overlap", [False, True])
def test_copy_all_layer_kv_cache(overlap):
    rows = 64
    bufs = [torch.randn(rows, 3, 8), torch.randn(rows, 2, 4).bfloat16(), torch.randn(rows, 5, dtype=torch.float64)]
    data_ptrs = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.int64)
    strides = torch.tensor([b[0].numel() * b.element_size() for b in bufs], dtype=torch.int64)
    src = torch.randperm(rows)[:20]
    tgt = torch.cat([src[5:15], torch.randperm(rows)[:10]]) if overlap else torch.randperm(rows)[:20]
    expected = [b.clone() for b in bufs]
    for e in expected:
        e[tgt] = e[src].clone()   # gather before scatter: overlapping sets see pre-copy values
    ops.copy_all_layer_kv_cache_cpu(data_ptrs, strides, tgt, src.int())
    for b, e in zip(bufs, expected):
        torch.testing.assert_close(b, e, rtol=0, atol=0)


def _ranges(bs, pool_len):
    starts = torch.randint(0, pool_len // 2, (bs,))
    lens = torch.randint(0, pool_len // 2, (bs,))
    lens[0] = 0                    # an empty range
    return starts, starts + lens


@pytest.mark.parametrize("table_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("bs", [1, 7, 33])
def test_assign_req_to_token_pool(table_dtype, bs):
    pool_len = 40
    table = torch.zeros(50, pool_len, dtype=table_dtype)
    rows = torch.randperm(50)[:bs]
    starts, ends = _ranges(bs, pool_len)
    locs = torch.randint(1, 10_000, (int((ends - starts).sum()),))
    expected, off = table.clone(), 0
    for r, s, e in zip(rows.tolist(), starts.tolist(), ends.tolist()):
        expected[r, s:e] = locs[off:off + e - s].to(table_dtype)
        off += e - s
    ops.assign_req_to_token_pool_cpu(rows, table, starts, ends, locs, pool_len)
    torch.testing.assert_close(table, expected, rtol=0, atol=0)
    opcheck(ops.assign_req_to_token_pool_cpu.default, (rows, table, starts, ends, locs, pool_len),
            test_utils=("test_schema",))


@pytest.mark.parametrize("out_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("bs", [1, 7, 33])
def test_assign_extend_cache_locs(out_dtype, bs):
    pool_len = 40
    table = torch.randint(0, 10_000, (50, pool_len), dtype=torch.int32)
    rows = torch.randperm(50)[:bs]
    starts, ends = _ranges(bs, pool_len)
    total = int((ends - starts).sum())
    out = torch.full((total + 3,), -7, dtype=out_dtype)      # tail past the packed runs stays untouched
    expected = out.clone()
    expected[:total] = torch.cat([table[r, s:e] for r, s, e in zip(rows, starts, ends)]).to(out_dtype)
    ops.assign_extend_cache_locs_cpu(rows, table, starts.int(), ends, out, pool_len)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("topk,num_steps", [(1, 1), (1, 4), (4, 3)])
def test_assign_draft_cache_locs_contiguous(topk, num_steps):
    bs, pool_len = 5, 64
    table = torch.randint(0, 10_000, (8, pool_len), dtype=torch.int32)
    rows = torch.randperm(8)[:bs]
    seq = torch.randint(1, 40, (bs,))
    n = topk * num_steps
    out = torch.empty(bs * n, dtype=torch.int64)
    ops.assign_draft_cache_locs_contiguous_cpu(rows, table, seq, out, pool_len, topk, num_steps)
    expected = torch.cat([table[r, s:s + n] for r, s in zip(rows, seq)]).long()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("topk,num_steps", [(1, 3), (2, 4)])
def test_build_draft_decode_metadata(topk, num_steps):
    bs, pool_len = 4, 48
    table = torch.randint(0, 10_000, (6, pool_len), dtype=torch.int32)
    rows = torch.randperm(6)[:bs]
    seq = torch.randint(0, 30, (bs,))
    out = ops.build_draft_decode_metadata_cpu(table, rows, seq, topk, num_steps, pool_len)
    expected = torch.zeros(bs * topk, pool_len, dtype=table.dtype)
    for b, (r, s) in enumerate(zip(rows.tolist(), seq.tolist())):
        for k in range(topk):
            expected[b * topk + k, :s] = table[r, :s]
            expected[b * topk + k, s:s + num_steps] = table[r, s + k * num_steps:s + (k + 1) * num_steps]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


# ---- verify bookkeeping ---------------------------------------------------------------------------

def test_fill_bonus_tokens():
    bs, stride = 6, 5
    tokens = torch.randint(0, 1000, (bs, stride), dtype=torch.int32)
    lens = torch.randint(1, stride + 1, (bs,), dtype=torch.int32)
    bonus = torch.zeros(bs, dtype=torch.int64)
    ops.fill_bonus_tokens_cpu(tokens, lens, bonus, stride)
    expected = tokens[torch.arange(bs), lens.long() - 1].long()
    torch.testing.assert_close(bonus, expected, rtol=0, atol=0)


def test_fill_accept_out_cache_loc():
    accept_index = torch.tensor([[0, 2, -1], [3, -1, -1], [6, 7, 8]], dtype=torch.int32)
    out_cache_loc = torch.arange(100, 109, dtype=torch.int64)
    dst = torch.full((9,), -1, dtype=torch.int64)
    ops.fill_accept_out_cache_loc_cpu(accept_index, out_cache_loc, dst)
    flat = accept_index.view(-1)
    kept = out_cache_loc[flat[flat > -1].long()]
    torch.testing.assert_close(dst[:kept.numel()], kept, rtol=0, atol=0)
    assert (dst[kept.numel():] == -1).all()


def _random_tree(n):
    """parent[t] for t in 1..n-1 (node 0 = root, parents precede children)."""
    return [-1] + [random.randrange(t) for t in range(1, n)]


def _links_ref(parent):
    """first child / next sibling of a parent array (children in index order)."""
    n = len(parent)
    children = [[k for k in range(n) if parent[k] == t] for t in range(n)]
    nxt = [c[0] if c else -1 for c in children]
    sib = [-1] * n
    for c in children:
        for a, b in zip(c, c[1:]):
            sib[a] = b
    return nxt, sib


def _depth(parent, t):
    d = 0
    while parent[t] != -1:
        t, d = parent[t], d + 1
    return d


def _ancestor_mask(parent):
    n = len(parent)
    m = torch.zeros(n, n, dtype=torch.bool)
    for t in range(n):
        a = t
        while a != -1:
            m[t, a] = True           # self and every ancestor
            a = parent[a]
    return m


@pytest.mark.parametrize("bs,n", [(1, 1), (3, 4), (9, 8), (2, 16)])
def test_reconstruct_indices_from_tree_mask(bs, n):
    random.seed(bs * 100 + n)
    parents = [_random_tree(n) for _ in range(bs)]
    mask = torch.stack([_ancestor_mask(p) for p in parents]).view(-1)
    seq = torch.randint(1, 50, (bs,))
    outs = [torch.full((bs * n,), -5, dtype=torch.int64) for _ in range(4)]
    ops.reconstruct_indices_from_tree_mask_cpu(mask, seq, *outs, bs, n)
    positions, ri, nxt, sib = outs
    for b, p in enumerate(parents):
        ref_next, ref_sib = _links_ref(p)
        sl = slice(b * n, (b + 1) * n)
        assert positions[sl].tolist() == [_depth(p, t) + int(seq[b]) for t in range(n)]
        assert ri[sl].tolist() == list(range(b * n, (b + 1) * n))
        assert nxt[sl].tolist() == ref_next
        assert sib[sl].tolist() == ref_sib


def _verify_tree_greedy_ref(candidates, ri, nxt, sib, target, steps):
    bs, n = candidates.shape
    predicts = torch.zeros(bs * n, dtype=torch.int32)
    accept_index = torch.full((bs, steps), -1, dtype=torch.int32)
    accept_num = torch.zeros(bs, dtype=torch.int32)
    for b in range(bs):
        last, cur, acc = int(ri[b, 0]), 0, 0
        accept_index[b, 0] = last
        for _ in range(1, steps):
            cur = int(nxt[b, cur])
            while cur != -1 and int(candidates[b, cur]) != int(target.view(-1)[last]):
                cur = int(sib[b, cur])
            if cur == -1:
                break
            predicts[last] = target.view(-1)[last]
            acc += 1
            last = int(ri[b, cur])
            accept_index[b, acc] = last
        accept_num[b] = acc
        predicts[last] = target.view(-1)[last]
    return predicts, accept_index, accept_num


@pytest.mark.parametrize("bs,n,steps", [(1, 2, 2), (5, 6, 4), (7, 8, 8)])
def test_verify_tree_greedy(bs, n, steps):
    random.seed(bs + n)
    vocab = 3                                  # small vocab: long accepted paths are common
    parents = [_random_tree(n) for _ in range(bs)]
    links = [_links_ref(p) for p in parents]
    nxt = torch.tensor([l[0] for l in links], dtype=torch.int64)
    sib = torch.tensor([l[1] for l in links], dtype=torch.int64)
    ri = torch.arange(bs * n, dtype=torch.int64).view(bs, n)
    candidates = torch.randint(0, vocab, (bs, n))
    target = torch.randint(0, vocab, (bs, n))
    predicts = torch.zeros(bs * n, dtype=torch.int32)
    accept_index = torch.full((bs, steps), -1, dtype=torch.int32)
    accept_num = torch.zeros(bs, dtype=torch.int32)
    ops.verify_tree_greedy_cpu(predicts, accept_index, accept_num, candidates, ri, nxt, sib, target)
    ref = _verify_tree_greedy_ref(candidates, ri, nxt, sib, target, steps)
    for got, want in zip((predicts, accept_index, accept_num), ref):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def _eagle_tree(topk, depth, num_nodes):
    """A valid EAGLE top-k tree: (parent_list, selected_index) as the EAGLE worker builds them.

    Score-list index s < topk is a first-step token (parent: root); s >= topk has parent slot s // topk,
    and parent_list[slot] is the score index of that parent.
    """
    parent_list = [-1] + list(range(topk))                     # step-1 tokens are all expanded
    for step in range(1, depth - 1):
        first = topk + (step - 1) * topk * topk
        parent_list += sorted(random.sample(range(first, first + topk * topk), topk))
    parent_of = {}
    for s in range(topk):
        parent_of[s] = None
    for slot in range(1, len(parent_list)):
        for k in range(topk):
            parent_of[slot * topk + k] = parent_list[slot]
    chosen, frontier = set(), [s for s in range(topk)]
    while len(chosen) < num_nodes and frontier:
        s = frontier.pop(random.randrange(len(frontier)))
        chosen.add(s)
        frontier += [c for c, p in parent_of.items() if p == s and c not in chosen and c not in frontier]
    return parent_list, sorted(chosen), parent_of


@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("topk,depth,n", [(1, 4, 4), (2, 3, 5), (4, 4, 8)])
def test_build_tree_kernel_efficient(mode, topk, depth, n):
    random.seed(topk * 10 + depth + n)
    bs = 3
    trees = [_eagle_tree(topk, depth, n - 1) for _ in range(bs)]
    parent_list = torch.tensor([t[0] for t in trees], dtype=torch.int64)
    selected = torch.tensor([t[1] for t in trees], dtype=torch.int64)
    seq = torch.randint(1, 6, (bs,))
    cells = bs * n * n + (int(seq.sum()) * n if mode == 0 else 0)
    tree_mask = torch.ones(cells, dtype=torch.bool)            # FULL_MASK: prefix columns preset to True
    positions = torch.zeros(bs * n, dtype=torch.int64)
    ri, nxt, sib = (torch.full((bs, n), -1, dtype=torch.int64) for _ in range(3))
    ops.build_tree_kernel_efficient_cpu(parent_list, selected, seq, tree_mask, positions, ri, nxt, sib,
                                        topk, depth, n, mode)
    offset = 0
    for b, (_, sel, parent_of) in enumerate(trees):
        node_of = {s: i + 1 for i, s in enumerate(sel)}
        parent = [-1] + [0 if parent_of[s] is None else node_of[parent_of[s]] for s in sel]
        ref_next, ref_sib = _links_ref(parent)
        assert nxt[b].tolist() == ref_next and sib[b].tolist() == ref_sib
        assert ri[b].tolist() == list(range(b * n, (b + 1) * n))
        assert positions[b * n:(b + 1) * n].tolist() == [_depth(parent, t) + int(seq[b]) for t in range(n)]
        row_len = n if mode == 1 else int(seq[b]) + n
        m = tree_mask[offset:offset + n * row_len].view(n, row_len)
        assert torch.equal(m[:, row_len - n:], _ancestor_mask(parent))
        assert bool(m[:, :row_len - n].all())
        offset += n * row_len


def test_rotate_input_ids():
    ids = torch.arange(20, dtype=torch.int64)
    starts, lens = torch.tensor([0, 5, 12]), torch.tensor([5, 0, 8])
    topk_index = torch.tensor([[100], [101], [102]])
    expected = ids.clone()
    for s, l, t in zip(starts.tolist(), lens.tolist(), topk_index.view(-1).tolist()):
        if l > 0:
            expected[s:s + l - 1] = ids[s + 1:s + l].clone()
            expected[s + l - 1] = t
    ops.rotate_input_ids_cpu(ids, starts, lens, topk_index, None)
    torch.testing.assert_close(ids, expected, rtol=0, atol=0)

    ids2 = torch.arange(10, dtype=torch.int32)
    ops.rotate_input_ids_cpu(ids2, torch.tensor([0]), torch.tensor([4]), torch.tensor([77]), torch.tensor([2]))
    assert ids2.tolist()[:4] == [1, 2, 77, 3]


def test_bad_input_names_the_op():
    table = torch.zeros(4, 8, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="assign_req_to_token_pool_cpu.*pool_len"):
        ops.assign_req_to_token_pool_cpu(torch.tensor([0]), table, torch.tensor([0]), torch.tensor([2]),
                                         torch.tensor([1, 2]), 9)
