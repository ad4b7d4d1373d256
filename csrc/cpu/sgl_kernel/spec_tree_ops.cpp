// Speculative-decoding metadata ops SGLang's CPU engine calls through torch.ops.sgl_kernel (see
// common.h). Token trees are stored as in sgl-kernel: per request, node i of n draft tokens has a
// first child retrive_next_token[i] and a next sibling retrive_next_sibling[i] (-1 = none), and
// retrive_index[i] is its row in the flattened [bs * n] verify batch.
//
//   verify_tree_greedy_cpu                walk the tree, accepting children equal to the target argmax
//   build_tree_kernel_efficient_cpu       EAGLE top-k tree -> mask, positions, child/sibling links
//   reconstruct_indices_from_tree_mask_cpu  NGRAM [n, n] ancestor mask -> positions and links
//   fill_bonus_tokens_cpu, fill_accept_out_cache_loc_cpu, rotate_input_ids_cpu
#include <vector>

#include "common.h"

namespace sgl_cpu {
namespace {

void fill_bonus_tokens_cpu(const at::Tensor& accept_tokens, const at::Tensor& accept_lens,
                           const at::Tensor& bonus_tokens, int64_t accept_stride) {
  constexpr const char* op = "fill_bonus_tokens_cpu";
  check_index(accept_tokens, op, "accept_tokens");
  check_index(accept_lens, op, "accept_lens");
  check_index(bonus_tokens, op, "bonus_tokens");
  const auto tokens = as_long(accept_tokens);
  const auto lens = as_long(accept_lens);
  const int64_t bs = lens.numel();
  SGL_CPU_CHECK(bonus_tokens.numel() >= bs, op, "bonus_tokens needs ", bs, " entries; got ", bonus_tokens.numel());
  const int64_t* t = tokens.data_ptr<int64_t>();
  const int64_t* l = lens.data_ptr<int64_t>();
  auto out = at::empty({bs}, tokens.options());
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < bs; ++i) {
    // accept_lens counts the bonus token, so it sits at the last accepted slot.
    const int64_t idx = accept_stride * i + l[i] - 1;
    SGL_CPU_CHECK(l[i] >= 1 && idx < tokens.numel(), op, "request ", i, " has accept_len ", l[i]);
    o[i] = t[idx];
  }
  auto dst = bonus_tokens.narrow(0, 0, bs);
  write_back(dst, out);
}

// Packs out_cache_loc[accept_index[j]] for every accepted (!= -1) entry, in order.
void fill_accept_out_cache_loc_cpu(const at::Tensor& accept_index, const at::Tensor& out_cache_loc,
                                   const at::Tensor& accept_out_cache_loc) {
  constexpr const char* op = "fill_accept_out_cache_loc_cpu";
  check_index(accept_index, op, "accept_index");
  check_index(out_cache_loc, op, "out_cache_loc");
  check_index(accept_out_cache_loc, op, "accept_out_cache_loc");
  const auto idx = as_long(accept_index);
  const auto locs = as_long(out_cache_loc);
  const int64_t* a = idx.data_ptr<int64_t>();
  const int64_t* l = locs.data_ptr<int64_t>();
  std::vector<int64_t> packed;
  packed.reserve(idx.numel());
  for (int64_t j = 0; j < idx.numel(); ++j) {
    if (a[j] > -1) packed.push_back(l[a[j]]);
  }
  const int64_t n = static_cast<int64_t>(packed.size());
  SGL_CPU_CHECK(accept_out_cache_loc.numel() >= n, op, "accept_out_cache_loc holds ", accept_out_cache_loc.numel(),
                " slots but ", n, " were accepted");
  auto dst = accept_out_cache_loc.view(-1).narrow(0, 0, n);
  dst.copy_(at::from_blob(packed.data(), {n}, at::kLong));
}

void verify_tree_greedy_cpu(const at::Tensor& predicts, const at::Tensor& accept_index,
                            const at::Tensor& accept_token_num, const at::Tensor& candidates,
                            const at::Tensor& retrive_index, const at::Tensor& retrive_next_token,
                            const at::Tensor& retrive_next_sibling, const at::Tensor& target_predict) {
  constexpr const char* op = "verify_tree_greedy_cpu";
  for (const auto* t : {&predicts, &accept_index, &accept_token_num, &candidates, &retrive_index,
                        &retrive_next_token, &retrive_next_sibling, &target_predict}) {
    check_index(*t, op, "every argument");
  }
  SGL_CPU_CHECK(candidates.dim() == 2 && accept_index.dim() == 2, op,
                "candidates and accept_index must be 2-D; got ", candidates.sizes(), " and ", accept_index.sizes());
  const int64_t bs = candidates.size(0), n = candidates.size(1), steps = accept_index.size(1);
  const auto cand = as_long(candidates);
  const auto ri = as_long(retrive_index);
  const auto next = as_long(retrive_next_token);
  const auto sib = as_long(retrive_next_sibling);
  const auto target = as_long(target_predict);
  SGL_CPU_CHECK(ri.numel() == bs * n && next.numel() == bs * n && sib.numel() == bs * n, op,
                "retrive_* tensors need bs * num_draft_tokens = ", bs * n, " entries");
  auto pred = long_scratch(predicts);
  auto acc_idx = long_scratch(accept_index);
  auto acc_num = long_scratch(accept_token_num);
  const int64_t* c = cand.data_ptr<int64_t>();
  const int64_t* rip = ri.data_ptr<int64_t>();
  const int64_t* nx = next.data_ptr<int64_t>();
  const int64_t* sb = sib.data_ptr<int64_t>();
  const int64_t* tp = target.data_ptr<int64_t>();
  int64_t* p = pred.data_ptr<int64_t>();
  int64_t* ai = acc_idx.data_ptr<int64_t>();
  int64_t* an = acc_num.data_ptr<int64_t>();
  for (int64_t b = 0; b < bs; ++b) {
    const int64_t row = b * n;
    int64_t last = rip[row];  // the root (the last committed token) is always accepted
    ai[b * steps] = last;
    int64_t accepted = 0, cur = 0;
    for (int64_t step = 1; step < steps; ++step) {
      cur = nx[row + cur];
      while (cur != -1 && c[row + cur] != tp[last]) cur = sb[row + cur];
      if (cur == -1) break;
      p[last] = tp[last];
      ++accepted;
      last = rip[row + cur];
      ai[b * steps + accepted] = last;
    }
    an[b] = accepted;
    p[last] = tp[last];  // bonus token from the deepest accepted node
  }
  auto out_pred = predicts, out_idx = accept_index, out_num = accept_token_num;
  write_back(out_pred, pred);
  write_back(out_idx, acc_idx);
  write_back(out_num, acc_num);
}

// Row index in selected_index of the node whose top-k token id is `token`, plus one (0 = the root);
// n when absent (an invalid tree).
int64_t node_after(const int64_t* selected, int64_t n, int64_t token) {
  for (int64_t j = 0; j < n - 1; ++j) {
    if (selected[j] == token) return j + 1;
  }
  return n;
}

void build_tree_kernel_efficient_cpu(const at::Tensor& parent_list, const at::Tensor& selected_index,
                                     const at::Tensor& verified_seq_len, const at::Tensor& tree_mask,
                                     const at::Tensor& positions, const at::Tensor& retrive_index,
                                     const at::Tensor& retrive_next_token, const at::Tensor& retrive_next_sibling,
                                     int64_t topk, int64_t depth, int64_t draft_token_num, int64_t tree_mask_mode) {
  constexpr const char* op = "build_tree_kernel_efficient_cpu";
  SGL_CPU_CHECK(tree_mask_mode == 0 || tree_mask_mode == 1, op,
                "tree_mask_mode must be 0 (FULL_MASK) or 1 (QLEN_ONLY); got ", tree_mask_mode);
  SGL_CPU_CHECK(tree_mask.scalar_type() == at::kBool && tree_mask.is_contiguous(), op,
                "tree_mask must be a contiguous bool tensor");
  const int64_t bs = selected_index.size(0), n = draft_token_num;
  const auto parents = as_long(parent_list);
  const auto selected = as_long(selected_index);
  const auto seq = as_long(verified_seq_len);
  const int64_t parent_stride = parents.numel() / std::max<int64_t>(bs, 1);
  SGL_CPU_CHECK(selected.numel() == bs * (n - 1), op, "selected_index must be [bs, draft_token_num - 1]");
  auto pos = long_scratch(positions);
  auto ri = long_scratch(retrive_index);
  auto nx = long_scratch(retrive_next_token);
  auto sb = long_scratch(retrive_next_sibling);
  int64_t* po = pos.data_ptr<int64_t>();
  int64_t* rio = ri.data_ptr<int64_t>();
  int64_t* nxo = nx.data_ptr<int64_t>();
  int64_t* sbo = sb.data_ptr<int64_t>();
  bool* mask = tree_mask.data_ptr<bool>();
  const int64_t* sl = seq.data_ptr<int64_t>();
  int64_t prefix_cells = 0;  // FULL_MASK rows carry the committed prefix too: sum of seq_len * n so far
  for (int64_t b = 0; b < bs; ++b) {
    const int64_t off = b * n;
    const int64_t* sel = selected.data_ptr<int64_t>() + b * (n - 1);
    const int64_t* par = parents.data_ptr<int64_t>() + b * parent_stride;
    // Links: visiting nodes from last to first makes each parent's child list come out in order.
    po[off] = sl[b];
    rio[off] = off;
    for (int64_t i = n - 1; i > 0; --i) {
      rio[off + i] = off + i;
      const int64_t parent_slot = sel[i - 1] / topk;
      const int64_t pp = parent_slot > 0 ? node_after(sel, n, par[parent_slot]) : 0;
      if (pp == n) continue;
      const int64_t first = nxo[off + pp];
      nxo[off + pp] = i;
      if (first != -1) sbo[off + i] = first;
    }
    // Mask row of node t: the root and every ancestor of t (t included) are visible.
    const int64_t row_len = tree_mask_mode == 1 ? n : sl[b] + n;
    const int64_t base = tree_mask_mode == 1 ? b * n * n : b * n * n + prefix_cells;
    for (int64_t t = 0; t < n; ++t) {
      bool* row = mask + base + t * row_len + (row_len - n);
      row[0] = true;
      for (int64_t j = 1; j < n; ++j) row[j] = false;
      if (t == 0) continue;
      int64_t d = 0, cur = t - 1;
      while (true) {
        ++d;
        row[cur + 1] = true;
        const int64_t parent_slot = sel[cur] / topk;
        if (parent_slot == 0) break;
        cur = node_after(sel, n, par[parent_slot]) - 1;
        if (cur >= n - 1) break;  // invalid tree: stop at what was found
      }
      po[off + t] = d + sl[b];
    }
    prefix_cells += sl[b] * n;
  }
  auto a = positions, r = retrive_index, x = retrive_next_token, s = retrive_next_sibling;
  write_back(a, pos);
  write_back(r, ri);
  write_back(x, nx);
  write_back(s, sb);
}

// tree_mask[b, i, j] (j < i) marks j an ancestor of i. Outputs per node t:
//   positions = #ancestors + seq_len, parent = nearest ancestor, next_token = first child,
//   next_sibling = next node with the same parent (-1 for the root).
void reconstruct_indices_from_tree_mask_cpu(const at::Tensor& tree_mask, const at::Tensor& verified_seq_len,
                                            const at::Tensor& positions, const at::Tensor& retrive_index,
                                            const at::Tensor& retrive_next_token,
                                            const at::Tensor& retrive_next_sibling, int64_t batch_size,
                                            int64_t draft_token_num) {
  constexpr const char* op = "reconstruct_indices_from_tree_mask_cpu";
  const int64_t bs = batch_size, n = draft_token_num;
  SGL_CPU_CHECK(tree_mask.numel() >= bs * n * n, op, "tree_mask needs batch_size * n * n = ", bs * n * n,
                " entries; got ", tree_mask.numel());
  const auto m = tree_mask.view(-1).narrow(0, 0, bs * n * n).to(at::kBool).contiguous();
  const auto seq = as_long(verified_seq_len);
  auto pos = long_scratch(positions);
  auto ri = long_scratch(retrive_index);
  auto nx = long_scratch(retrive_next_token);
  auto sb = long_scratch(retrive_next_sibling);
  const bool* mk = m.data_ptr<bool>();
  const int64_t* sl = seq.data_ptr<int64_t>();
  int64_t* po = pos.data_ptr<int64_t>();
  int64_t* rio = ri.data_ptr<int64_t>();
  int64_t* nxo = nx.data_ptr<int64_t>();
  int64_t* sbo = sb.data_ptr<int64_t>();
  at::parallel_for(0, bs, 16, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> parent(n);
    for (int64_t b = begin; b < end; ++b) {
      const bool* mb = mk + b * n * n;
      const int64_t off = b * n;
      for (int64_t t = 0; t < n; ++t) {
        int64_t depth = 0, nearest = -1;
        for (int64_t j = 0; j < t; ++j) {
          if (mb[t * n + j]) {
            ++depth;
            nearest = j;
          }
        }
        parent[t] = nearest;
        po[off + t] = depth + sl[b];
        rio[off + t] = off + t;
      }
      for (int64_t t = 0; t < n; ++t) {
        int64_t child = -1, sibling = -1;
        for (int64_t k = t + 1; k < n && child == -1; ++k) {
          if (mb[k * n + t]) child = k;
        }
        if (parent[t] >= 0) {
          for (int64_t k = t + 1; k < n && sibling == -1; ++k) {
            if (parent[k] == parent[t]) sibling = k;
          }
        }
        nxo[off + t] = child;
        sbo[off + t] = sibling;
      }
    }
  });
  auto a = positions, r = retrive_index, x = retrive_next_token, s = retrive_next_sibling;
  write_back(a, pos);
  write_back(r, ri);
  write_back(x, nx);
  write_back(s, sb);
}

// Per request: shift its extend segment left by one and put topk_index[i] in the freed slot (the
// segment's last position, or select_index[i] when given).
void rotate_input_ids_cpu(const at::Tensor& input_ids, const at::Tensor& extend_start_loc,
                          const at::Tensor& extend_seq_lens, const at::Tensor& topk_index,
                          const std::optional<at::Tensor>& select_index) {
  constexpr const char* op = "rotate_input_ids_cpu";
  check_index(input_ids, op, "input_ids");
  const auto starts = as_long(extend_start_loc);
  const auto lens = as_long(extend_seq_lens);
  const auto top = as_long(topk_index).view(-1);
  const int64_t bs = starts.numel();
  SGL_CPU_CHECK(top.numel() >= bs, op, "topk_index needs one token per request (", bs, ")");
  at::Tensor sel;
  if (select_index.has_value()) sel = as_long(*select_index);
  auto ids = long_scratch(input_ids);
  int64_t* x = ids.data_ptr<int64_t>();
  const int64_t* st = starts.data_ptr<int64_t>();
  const int64_t* ln = lens.data_ptr<int64_t>();
  const int64_t* tk = top.data_ptr<int64_t>();
  for (int64_t i = 0; i < bs; ++i) {
    if (ln[i] <= 0) continue;
    for (int64_t j = 0; j + 1 < ln[i]; ++j) x[st[i] + j] = x[st[i] + j + 1];
    const int64_t dst = sel.defined() ? sel.data_ptr<int64_t>()[i] : st[i] + ln[i] - 1;
    x[dst] = tk[i];
  }
  auto out = input_ids;
  write_back(out, ids);
}

}  // namespace
}  // namespace sgl_cpu

TORCH_LIBRARY_FRAGMENT(sgl_kernel, m) {
  m.def("fill_bonus_tokens_cpu(Tensor accept_tokens, Tensor accept_lens, Tensor(a!) bonus_tokens,"
        " int accept_stride) -> ()");
  m.def("fill_accept_out_cache_loc_cpu(Tensor accept_index, Tensor out_cache_loc,"
        " Tensor(a!) accept_out_cache_loc) -> ()");
  m.def("verify_tree_greedy_cpu(Tensor(a!) predicts, Tensor(b!) accept_index, Tensor(c!) accept_token_num,"
        " Tensor candidates, Tensor retrive_index, Tensor retrive_next_token, Tensor retrive_next_sibling,"
        " Tensor target_predict) -> ()");
  m.def("build_tree_kernel_efficient_cpu(Tensor parent_list, Tensor selected_index, Tensor verified_seq_len,"
        " Tensor(a!) tree_mask, Tensor(b!) positions, Tensor(c!) retrive_index, Tensor(d!) retrive_next_token,"
        " Tensor(e!) retrive_next_sibling, int topk, int depth, int draft_token_num, int tree_mask_mode) -> ()");
  m.def("reconstruct_indices_from_tree_mask_cpu(Tensor tree_mask, Tensor verified_seq_len, Tensor(a!) positions,"
        " Tensor(b!) retrive_index, Tensor(c!) retrive_next_token, Tensor(d!) retrive_next_sibling,"
        " int batch_size, int draft_token_num) -> ()");
  m.def("rotate_input_ids_cpu(Tensor(a!) input_ids, Tensor extend_start_loc, Tensor extend_seq_lens,"
        " Tensor topk_index, Tensor? select_index=None) -> ()");
}

TORCH_LIBRARY_IMPL(sgl_kernel, CPU, m) {
  m.impl("fill_bonus_tokens_cpu", &sgl_cpu::fill_bonus_tokens_cpu);
  m.impl("fill_accept_out_cache_loc_cpu", &sgl_cpu::fill_accept_out_cache_loc_cpu);
  m.impl("verify_tree_greedy_cpu", &sgl_cpu::verify_tree_greedy_cpu);
  m.impl("build_tree_kernel_efficient_cpu", &sgl_cpu::build_tree_kernel_efficient_cpu);
  m.impl("reconstruct_indices_from_tree_mask_cpu", &sgl_cpu::reconstruct_indices_from_tree_mask_cpu);
  m.impl("rotate_input_ids_cpu", &sgl_cpu::rotate_input_ids_cpu);
}
