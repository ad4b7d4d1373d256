"""`DSparkServeWorker`: the speculative worker SGLang builds for `--speculative-algorithm DSPARK`.

It follows SGLang's V2 spec-worker contract (`BaseSpecWorker`; the scheduler drives it synchronously,
overlap off) and reuses SGLang's DSPARK plumbing on the target side: aux hidden-state capture of the
drafter's `target_layer_ids` (`CaptureHiddenMode.FULL` -> `logits_output.hidden_states`) and the
`DFlashDraftInputV2` slot reservation (2·(γ+1) KV slots past the committed length each decode).

One decode step (DSpark §3):

    SPS    = ContextCost.step_table(SPS_profile, R, C)     # this batch's step prices: 1/SPS(B) + the
                                                           # attention over its C committed context tokens
    gate   = DraftGate.should_draft(R, SPS)                # from past steps: does drafting pay now? If
                                                           # not, a plain step: SGLang's DECODE forward over
                                                           # the anchors (`plain_forward`), no drafter
    block  = drafter.propose(context, anchors, floor)     # γ drafts, q, confidence logits; slots whose
                                                           # survival alg1 can never admit are not drafted
                                                           # (from a floor of 0.02 up: `pruning_floor`,
                                                           # where measured cheaper: `PruningChoice`)
    a, thr = ops.confidence_survival(conf, T_sts, thr)     # survival a_{r,j}
    ℓ      = policy(a, SPS)                                # verify lengths (scheduling/)
    logits = ragged TARGET_VERIFY over [x0, d_1..d_ℓ]      # ONE forward, Σ(ℓ_r+1) rows
    acc    = ops.verify_greedy / ops.verify_sampled        # lossless
    commit x0 + accepted drafts: hidden -> draft context; bonus -> next anchor
"""
from __future__ import annotations

import itertools
import logging
import time

import torch
import torch.nn.functional as F
from torch import nn

from dspark_sglang import ops
from dspark_sglang.calibration.online_calibration import OnlineCalibration
from dspark_sglang.drafter.block import DraftBlock
from dspark_sglang.drafter.checkpoint import load_drafter
from dspark_sglang.drafter.packed_inference import pack_for_inference
from dspark_sglang.sampling import SamplingBatch, logits_to_probs, ragged_probs, sample_tokens
from dspark_sglang.scheduling import LaggedBudget, plan_verify_lens, pruning_floor
from dspark_sglang.scheduling.context_cost import ContextCost
from dspark_sglang.scheduling.draft_gate import DraftGate, size_class
from dspark_sglang.scheduling.pruning_choice import PruningChoice
from dspark_sglang.serving import cli_args, sps_profile
from dspark_sglang.serving.cpu_host import bootstrap
from dspark_sglang.serving.draft_state import DraftContexts
from dspark_sglang.serving.metrics import DSparkMetrics
from dspark_sglang.serving.plain_forward import plain_decode_forward
from dspark_sglang.serving.prompt_lookup import LookupBlock, PromptLookup
from dspark_sglang.serving.rounds_log import RoundsLog
from dspark_sglang.serving.shared_corpus import SharedCorpus
from dspark_sglang.serving.verify_forward import RaggedVerifyInput

from sglang.srt.managers.utils import GenerationBatchResult
from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode, ForwardMode
from sglang.srt.runtime_context import get_device, get_spec
from sglang.srt.speculative.base_spec_worker import BaseSpecWorker
from sglang.srt.speculative.dflash_info_v2 import DFlashDraftInputV2
from sglang.srt.speculative.draft_worker_common import make_draft_input_v2

logger = logging.getLogger(__name__)

GATE_WARMUP_REQUEST_DRAFTS = 32
"""Request-drafts the draft gate observes before it may choose plain steps (≈ 4 online-calibration refits
at one request; two steps at sixteen)."""


class _Embedding(nn.Module):
    """The target's input embedding as a plain module (SGLang's VocabParallelEmbedding, TP=1)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class _LMHead(nn.Module):
    """The target's lm_head as a plain linear (SGLang's ParallelLMHead has no usable forward)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight)


_warned_unsupported: set[str] = set()


def _warn_unsupported(sp) -> None:
    """Speculation here reproduces temperature / top-k / top-p only; say so once per parameter."""
    for name, active in (("min_p", getattr(sp, "min_p", 0.0) > 0), ("logit_bias", bool(getattr(sp, "logit_bias", None))),
                         ("frequency_penalty", getattr(sp, "frequency_penalty", 0.0) != 0),
                         ("presence_penalty", getattr(sp, "presence_penalty", 0.0) != 0),
                         ("repetition_penalty", getattr(sp, "repetition_penalty", 1.0) != 1)):
        if active and name not in _warned_unsupported:
            _warned_unsupported.add(name)
            logger.warning("DSpark (dspark_sglang) ignores %s during speculative decoding; only temperature, "
                           "top_k and top_p shape the verified distribution", name)


def _sampling_batch(reqs, device) -> SamplingBatch:
    """Per-request temperature / top-k / top-p. SGLang marks greedy requests with top_k == 1."""
    temps, top_ks, top_ps = [], [], []
    for req in reqs:
        sp = req.sampling_params
        _warn_unsupported(sp)
        greedy = sp.top_k == 1
        temps.append(0.0 if greedy else float(sp.temperature))
        top_ks.append(0 if greedy or sp.top_k >= (1 << 30) or sp.top_k < 0 else int(sp.top_k))
        top_ps.append(float(sp.top_p))
    return SamplingBatch.from_lists(temps, top_ks, top_ps, device=device)


class DSparkServeWorker(BaseSpecWorker):
    """SGLang spec worker running the dspark_sglang drafter, scheduler and verifier."""

    def __init__(self, server_args, gpu_id: int, nccl_port: int, target_worker) -> None:
        super().__init__()
        self.server_args = server_args
        self._target_worker = target_worker
        self._draft_worker = None
        self.model_runner = target_worker.model_runner
        self.device = get_device().device
        self.config = cli_args.config_from_server_args(server_args)
        self.num_draft_tokens = int(get_spec().speculative_num_draft_tokens)   # W = G + 1
        self.gamma = self.num_draft_tokens - 1
        """G: draft slots of the verify window (the drafter's γ, or the longest prompt-lookup block)."""
        draft_path = get_spec().speculative_draft_model_path
        self.drafter = self._load_drafter(draft_path)
        self.draft_gamma = self.config.draft_gamma(self.drafter.config.block_size)
        """γ: slots of the drafter's blocks (≤ G)."""
        self.min_len, self.draft_max_len = self.config.verify_bounds(self.draft_gamma)
        self.max_len = self.config.verify_bounds(self.gamma)[1]
        """Verify lengths: ≥ min_len; ≤ draft_max_len on a drafter block, ≤ max_len on a lookup block."""
        self.vocab_size = self.drafter.config.vocab_size
        self.sts_temperatures = sps_profile.load_sts(self.config.sts, self.draft_gamma, draft_path).to(self.device)
        self.sts_biases = torch.zeros_like(self.sts_temperatures)                         # [γ] online offsets b
        self.online_calibration = (OnlineCalibration(self.sts_temperatures)
                                   if self.config.online_calibration == "auto"
                                   and self.drafter.confidence_head is not None else None)
        """Refits c_k = σ(z_k / T_k + b_k) from verify outcomes; None = the offline temperatures stay."""
        self.contexts = DraftContexts(self.drafter)
        self.can_prune = self.drafter.confidence_head is not None and self.drafter.markov_head.rank > 0
        """Slots alg1 can never admit may go undrafted, where that floor is high enough to prune any
        (`scheduling.pruning_floor`)."""
        self.pruning = PruningChoice()
        """Whether pruning them is cheaper than drafting every slot on this host, measured per batch size."""
        self._on_cuda = torch.device(self.device).type == "cuda"
        self.lagged = LaggedBudget(lag=2)
        shared = SharedCorpus(self.config.shared_lookup_tokens) if self.config.shared_lookup_tokens > 0 else None
        self.prompt_lookup = (PromptLookup(min(self.gamma, self.config.lookup_max_len), shared=shared)
                              if self.config.uses_prompt_lookup(torch.device(self.device).type) else None)
        """Per request, a block copied from its own context when that is expected to be accepted longer."""
        self.sps_table = torch.ones(2, dtype=torch.float64)    # replaced in init_cuda_graphs
        self.context_cost = ContextCost.none()                  # measured with the SPS profile (init_cuda_graphs)
        self.gate: DraftGate | None = None                     # built with the SPS table (init_cuda_graphs)
        self._last_decode_end: float | None = None             # perf_counter; None after a prefill / idle
        self._last_drafted = False                              # whether that decode step drafted
        self.generator = torch.Generator(device=self.device).manual_seed(int(server_args.random_seed or 0))
        self.step = 0
        self.rounds_log = RoundsLog(self.config.rounds_log) if self.config.rounds_log else None
        self.metrics = DSparkMetrics(enabled=bool(getattr(server_args, "enable_metrics", False)),
                                     log_interval=self.config.log_interval, gamma=self.gamma)

    # ------------------------------------------------------------------ construction
    def _load_drafter(self, path: str):
        model = self.model_runner.model
        embed_weight = model.model.embed_tokens.weight
        head = getattr(model, "lm_head", None)
        head_weight = head.weight if head is not None else embed_weight
        hf_config = self.model_runner.model_config.hf_config.to_dict()
        vocab = int(hf_config["vocab_size"])
        drafter = load_drafter(path, hf_config, _Embedding(embed_weight[:vocab]), _LMHead(head_weight[:vocab]),
                               dtype=embed_weight.dtype, device=embed_weight.device)
        logger.info("DSpark drafter loaded from %s (%d layers, block %d, dtype %s)", path,
                    drafter.config.num_hidden_layers, drafter.config.block_size, drafter.dtype)
        if bootstrap.packed_linear_wanted():      # CPU with packed_linear's vector face; else a no-op
            packed = pack_for_inference(drafter)
            if packed:
                logger.info("DSpark drafter: %d linears and the draft-vocabulary heads run packed_linear", packed)
        return drafter

    @property
    def draft_worker(self):
        return None

    def alloc_memory_pool(self, **kwargs) -> None:
        self.req_to_token_pool, self.token_to_kv_pool_allocator = self._target_worker.get_memory_pool()

    def init_attention_backends(self) -> None:
        pass

    def init_cuda_graphs(self) -> None:
        """No graphs on CPU; this is the first point where the target's pools and attention backend
        exist, so the SPS(B) profile is measured (or read from its cache) here."""
        self.sps_table, self.context_cost = sps_profile.load_or_profile(self, self.config)
        if self.config.draft_gate == "auto" and self.config.policy in ("alg1", "lagged-topk"):
            self.gate = DraftGate(self.sps_table, warmup_request_drafts=GATE_WARMUP_REQUEST_DRAFTS)

    # ------------------------------------------------------------------ scheduler hooks
    def note_request_finished(self, *, rid: str, natural_stop: bool) -> None:
        self.contexts.drop(rid)
        self.lagged.drop(rid)
        if self.prompt_lookup is not None:
            self.prompt_lookup.drop(rid)

    def dump_info_records(self):
        return self.metrics.snapshot()

    def clear_info_records(self) -> None:
        self.metrics.reset()

    def block_accept_estimate_log_suffix(self) -> str:
        return self.metrics.log_suffix()

    # ------------------------------------------------------------------ step
    def forward_batch_generation(self, batch, on_publish=None, grammar_barrier=None, *, pp_proxy_tensors=None):
        if batch.forward_mode.is_extend():
            return self._prefill(batch, on_publish)
        if batch.forward_mode.is_idle() or len(batch.reqs) == 0:
            return self._idle(on_publish)
        return self._decode(batch, on_publish)

    def _idle(self, on_publish) -> GenerationBatchResult:
        self._last_decode_end = None
        empty = torch.empty((0,), dtype=torch.int64, device=self.device)
        draft_input = make_draft_input_v2(bonus_tokens=empty, new_seq_lens=empty)
        if on_publish is not None:
            on_publish(draft_input.new_seq_lens)
        return GenerationBatchResult(next_token_ids=empty, accept_lens=empty.to(torch.int32),
                                     next_draft_input=draft_input, speculative_num_draft_tokens=self.num_draft_tokens,
                                     new_seq_lens=draft_input.new_seq_lens)

    def _prefill(self, batch, on_publish) -> GenerationBatchResult:
        """Target prefill with aux capture; every extended token's features go to its draft context."""
        self._last_decode_end = None
        result = self.target_worker.forward_batch_generation(batch, capture_hidden_mode=CaptureHiddenMode.FULL)
        hidden = result.logits_output.hidden_states                  # [Σ extend, n·H]
        assert hidden is not None, "target did not capture the drafter's layers (DSPARK aux capture is off)"
        self.contexts.extend_many([req.rid for req in batch.reqs], hidden, [int(n) for n in batch.extend_lens],
                                  [int(p) for p in batch.prefix_lens])
        result.logits_output.hidden_states = None
        result.new_seq_lens = batch.seq_lens
        result.next_draft_input = make_draft_input_v2(bonus_tokens=result.next_token_ids,
                                                      new_seq_lens=batch.seq_lens)
        if on_publish is not None:
            on_publish(result.new_seq_lens)
        return result

    def _draft_and_plan(self, reqs, anchors, seq_lens, sampling, all_greedy, table):
        """Draft a block for every request (the drafter's, or a prompt-lookup block where that is expected
        to be accepted longer), then survival and the policy's verify lengths, priced with `table` (this
        step's SPS table, context cost included).

        Returns the DraftBlock (draft_ids [R, G]; the drafter's q and confidence logits keep its own γ
        slots), survival [R, G] float32 (0 past a block's end), verify_lens [R] int32 and the prompt-lookup
        blocks by row ({} when none replaced the drafter's)."""
        rids = [req.rid for req in reqs]
        num_reqs, gamma, draft_gamma = len(rids), self.gamma, self.draft_gamma
        floor = pruning_floor(self.config.policy, table, num_reqs, self.min_len, self.max_len) \
            if self.can_prune else 0.0
        prune = floor > 0.0 and self.pruning.should_prune(num_reqs)
        context = self.contexts.stacked(rids)
        propose_start = time.perf_counter()
        block = self.drafter.propose(context, anchors, seq_lens, sampling, self.generator,
                                     need_probs=not all_greedy, survival_floor=floor if prune else 0.0,
                                     sts_temperatures=self.sts_temperatures, keep_slots=self.min_len,
                                     sts_biases=self.sts_biases)
        if floor > 0.0:             # both ways were open: time this one for the choice
            if self._on_cuda:       # the drafter's kernels, not their launches
                torch.cuda.synchronize(self.device)
            before = self.pruning.preferred(num_reqs)
            self.pruning.record(num_reqs, prune, time.perf_counter() - propose_start, batch=tuple(rids))
            after = self.pruning.preferred(num_reqs)
            if after is not None and after != before:
                logger.info("DSpark drafting at %d request(s): %s (pruned - unpruned %+.2f ms per request, "
                            "measured)", num_reqs, "pruned at alg1's floor" if after else "every slot",
                            1e3 * self.pruning.pruned_minus_full[size_class(num_reqs)])
        if block.conf_logits is not None:
            # z + b·T, so that the op's σ(· / T) is σ(z / T + b) (b = 0 without online calibration)
            conf = block.conf_logits[:, :draft_gamma].float() + self.sts_biases * self.sts_temperatures   # [R, γ]
            survival, threshold_lens = ops.confidence_survival(conf.contiguous(), self.sts_temperatures,
                                                               self.config.threshold)
        else:   # no confidence head: every draft is a candidate
            survival = torch.ones(num_reqs, draft_gamma, dtype=torch.float32, device=self.device)
            threshold_lens = torch.full((num_reqs,), draft_gamma, dtype=torch.int32, device=self.device)
        # the window's slots past the drafter's γ hold nothing until a lookup block fills them
        survival = F.pad(survival, (0, gamma - draft_gamma))                                   # [R, G]
        block.draft_ids = F.pad(block.draft_ids[:, :draft_gamma], (0, gamma - draft_gamma))    # [R, G]
        looked_up = self._prompt_lookup_rows(reqs, anchors, sampling, block, survival, threshold_lens) \
            if self.prompt_lookup is not None else {}
        lagged = (self.lagged.lagged_rows(rids, gamma, self.device)
                  if self.config.policy == "lagged-topk" else None)
        verify_lens, _ = plan_verify_lens(self.config.policy, survival, threshold_lens, table,
                                          self.min_len, self.max_len, lagged)
        if looked_up or self.draft_max_len < self.max_len:
            # a block verifies at most its own length: m on a lookup row, γ on the drafter's (static and
            # threshold included; alg1 never admits a slot of survival 0 anyway)
            verify_lens = self._cap_at_lookup_lengths(verify_lens, looked_up, others=self.draft_max_len)
        if self.config.policy == "lagged-topk":
            self.lagged.push(rids, survival)
        return block, survival, verify_lens, looked_up

    def _prompt_lookup_rows(self, reqs, anchors, sampling, block, survival, threshold_lens) -> dict[int, LookupBlock]:
        """Replace, in place, the drafter's block of every request whose prompt-lookup block has the larger
        expected accepted length Σ_j a_j: draft ids, q (one-hot; block.draft_probs is widened when a
        lookup block is longer than it), survival and threshold length (block.draft_ids and survival [R, G])."""
        gamma, lookup = self.gamma, self.prompt_lookup
        anchors_cpu = anchors.tolist()                                                 # sync: small
        greedy = sampling.is_greedy.tolist()
        found = {r: b for r, req in enumerate(reqs)
                 if (b := lookup.propose(req.rid, req.origin_input_ids, req.output_ids, anchors_cpu[r])) is not None}
        if not found:
            return {}
        drafter_expected = survival.sum(dim=1).tolist()                                # sync: [R]
        chosen = {}
        for row, b in found.items():
            lookup.acceptance.forget(b.match_len, greedy[row], b.source)
            a = lookup.acceptance.survival(b, greedy[row])                             # [γ] host
            if a.sum() > drafter_expected[row]:
                chosen[row] = (b, a)
        if not chosen:
            return {}
        rows = torch.tensor(list(chosen), dtype=torch.int64, device=self.device)
        ids = torch.zeros(len(chosen), gamma, dtype=torch.int64)                       # [n, γ] (0 past m)
        surv = torch.zeros(len(chosen), gamma, dtype=torch.float32)
        for i, (b, a) in enumerate(chosen.values()):
            ids[i, :b.tokens.size] = torch.from_numpy(b.tokens)
            surv[i, :a.size] = torch.from_numpy(a).float()
        ids, surv = ids.to(self.device), surv.to(self.device)
        block.draft_ids[rows] = ids
        survival[rows] = surv
        threshold_lens[rows] = (surv >= self.config.threshold).int().cumprod(dim=1).sum(dim=1).int()
        if block.draft_probs is not None:
            longest = max(b.tokens.size for b, _ in chosen.values())
            block.draft_probs = self._set_one_hot_q(block.draft_probs, rows, ids[:, :longest])
        return {row: b for row, (b, _) in chosen.items()}

    @staticmethod
    def _set_one_hot_q(draft_probs, rows, ids) -> torch.Tensor:
        """q_k = one-hot(x_k) on `rows` of draft_probs [R, γ', V] for their lookup drafts ids [n, m].

        Returns draft_probs, widened with zero slots to [R, m, V] when m > γ' (the drafter's q covers its
        own γ slots; a longer lookup block needs q on its slots too)."""
        if ids.shape[1] > draft_probs.shape[1]:
            draft_probs = F.pad(draft_probs, (0, 0, 0, ids.shape[1] - draft_probs.shape[1]))
        probs = torch.zeros(ids.shape[0], ids.shape[1], draft_probs.shape[-1], dtype=draft_probs.dtype,
                            device=draft_probs.device)
        draft_probs[rows, :ids.shape[1]] = probs.scatter_(2, ids.unsqueeze(2), 1.0)
        return draft_probs

    def _verify_forward(self, batch, anchors, draft_ids, verify_lens, seq_lens):
        """ONE ragged TARGET_VERIFY forward over [x0, d_1..d_ℓ_r] per request (ℓ_r + 1 rows each); a DECODE
        forward over the anchors when no request verifies a draft.

        Returns the logits output (Σ rows of logits and captured hidden states), the [R, W] mask of the rows
        each request verifies and the rows per request (host list)."""
        width = self.num_draft_tokens
        rows = verify_lens.to(torch.int64) + 1                                             # [R]
        rows_cpu = rows.tolist()                                                           # sync: host layout
        offsets = torch.arange(width, device=self.device)
        row_mask = offsets.unsqueeze(0) < rows.unsqueeze(1)                                # [R, W]
        if max(rows_cpu) == 1:     # the policy verifies no draft: the anchors alone, as a DECODE forward
            return (plain_decode_forward(self.target_worker, batch, anchors, seq_lens,
                                         self.req_to_token_pool.req_to_token), row_mask, rows_cpu)
        tokens = torch.cat([anchors.unsqueeze(1), draft_ids], dim=1)                       # [R, W]
        positions_2d = seq_lens.unsqueeze(1) + offsets                                     # [R, W]
        req_to_token = self.req_to_token_pool.req_to_token
        cache_loc_2d = req_to_token[batch.req_pool_indices.to(torch.int64).unsqueeze(1), positions_2d]
        verify_input = RaggedVerifyInput(
            draft_token=tokens[row_mask], positions=positions_2d[row_mask], draft_token_num=width,
            custom_mask=None, capture_hidden_mode=CaptureHiddenMode.FULL)
        verify_input.set_rows(rows.to(torch.int32), max(rows_cpu))
        batch.forward_mode = ForwardMode.TARGET_VERIFY
        batch.input_ids = verify_input.draft_token
        batch.out_cache_loc = cache_loc_2d[row_mask].to(torch.int64)
        batch.spec_info = verify_input
        out = self.target_worker.forward_batch_generation(batch, is_verify=True,
                                                          capture_hidden_mode=CaptureHiddenMode.FULL)
        return out.logits_output, row_mask, rows_cpu

    def _lookup_only_plan(self, reqs, anchors, sampling, all_greedy, survival, table):
        """A step without the drafter that verifies prompt-lookup blocks where the policy admits them.

        Returns (DraftBlock of lookup rows (zeros elsewhere), verify_lens [R] int32, lookup blocks by row),
        or (None, zero verify_lens, {}) when no request verifies any (then the step is a plain one)."""
        num_reqs, gamma = len(reqs), self.gamma
        none = (None, torch.zeros(num_reqs, dtype=torch.int32, device=self.device), {})
        # q: no slots yet (sampled rows only); the lookup rows widen it to their longest block, one-hot
        no_q = None if all_greedy else torch.zeros(num_reqs, 0, self.vocab_size, device=self.device)   # [R, 0, V]
        block = DraftBlock(draft_ids=torch.zeros(num_reqs, gamma, dtype=torch.int64, device=self.device),
                           draft_probs=no_q, conf_logits=None)
        threshold_lens = torch.zeros(num_reqs, dtype=torch.int32, device=self.device)
        looked_up = self._prompt_lookup_rows(reqs, anchors, sampling, block, survival, threshold_lens)
        if not looked_up:
            return none
        # priced by Algorithm 1 whatever the policy (the gate, hence lookup-only steps, exists for alg1 and
        # lagged-topk; the lagged budget belongs to drafted steps)
        verify_lens, _ = plan_verify_lens("alg1", survival, threshold_lens, table, 0, self.max_len)
        verify_lens = self._cap_at_lookup_lengths(verify_lens, looked_up, others=0)   # others stay plain
        if int(verify_lens.max()) == 0:                        # sync: the policy admits none: a plain step
            return none
        return block, verify_lens, looked_up

    @staticmethod
    def _cap_at_lookup_lengths(verify_lens, looked_up: dict[int, LookupBlock], others: int):
        """verify_lens [R] capped at each lookup block's length m, and at `others` on the other rows."""
        cap = torch.full((verify_lens.shape[0],), others, dtype=torch.int32)
        for row, found in looked_up.items():
            cap[row] = found.tokens.size
        return torch.minimum(verify_lens, cap.to(verify_lens.device))

    def _record_lookups(self, looked_up: dict[int, LookupBlock], verify_lens, accepted, sampling) -> None:
        """Feed the verify outcome of every prompt-lookup block to its acceptance table."""
        rows = list(looked_up)
        index = torch.tensor(rows, dtype=torch.int64, device=self.device)
        verified, taken = verify_lens[index].tolist(), accepted[index].tolist()
        greedy = sampling.is_greedy[index].tolist()
        for row, v, a, g in zip(rows, verified, taken, greedy):
            self.prompt_lookup.acceptance.record(looked_up[row].match_len, g, v, a, looked_up[row].source)
        self.metrics.record_lookups(len(rows), sum(looked_up[row].source == "shared" for row in rows))

    @torch.no_grad()
    def _decode(self, batch, on_publish) -> GenerationBatchResult:
        started = time.perf_counter()
        between = None if self._last_decode_end is None else started - self._last_decode_end   # engine time
        if self.gate is not None and between is not None:
            self.gate.record_between_steps(between, after_drafted=self._last_drafted)
        draft_input = batch.spec_info
        assert isinstance(draft_input, DFlashDraftInputV2), f"unexpected spec_info {type(draft_input)}"
        reqs = batch.reqs
        rids = [req.rid for req in reqs]
        num_reqs, gamma, width = len(reqs), self.gamma, self.num_draft_tokens
        anchors = draft_input.bonus_tokens.to(torch.int64)                               # [R]
        seq_lens = batch.seq_lens.to(torch.int64)                                          # [R] committed
        sampling = _sampling_batch(reqs, self.device)
        seq_lens_cpu = seq_lens.tolist()                                                  # sync: [R] host ints
        # this step's SPS table: 1/SPS(B) plus the attention over the batch's committed context
        table = self.context_cost.step_table(self.sps_table, num_reqs, self.context_cost.context_tokens(seq_lens_cpu),
                                             num_reqs * self.num_draft_tokens)

        # 1-2) draft -> confidence -> survival -> verify lengths, unless the gate chose a plain step
        all_greedy = bool(sampling.is_greedy.all())    # sync: small parameter tensor
        drafting = self.max_len > 0 and (self.gate is None or self.gate.should_draft(num_reqs, table))
        looked_up: dict[int, LookupBlock] = {}
        flush_seconds = 0.0
        if drafting:   # the plain steps' queued draft-context commits: their cost, not this step's drafting
            flush_start = time.perf_counter()
            self.contexts.flush()
            flush_seconds = time.perf_counter() - flush_start
        draft_start = time.perf_counter()
        if drafting:
            block, survival, verify_lens, looked_up = self._draft_and_plan(reqs, anchors, seq_lens, sampling,
                                                                           all_greedy, table)
            draft_ids = block.draft_ids                                                    # [R, G]
        else:           # plain step: no drafter, one verify row (the anchor) per request, unless some request
            #             can verify a prompt-lookup block (then a lookup-only step: those rows only)
            block = None
            survival = torch.zeros(num_reqs, gamma, dtype=torch.float32, device=self.device)
            verify_lens = torch.zeros(num_reqs, dtype=torch.int32, device=self.device)
            draft_ids = torch.zeros(num_reqs, gamma, dtype=torch.int64, device=self.device)
            if self.prompt_lookup is not None and self.max_len > 0:
                block, verify_lens, looked_up = self._lookup_only_plan(reqs, anchors, sampling, all_greedy, survival,
                                                                       table)
                draft_ids = block.draft_ids if block is not None else draft_ids
        lookup_only = not drafting and bool(looked_up)
        draft_seconds = time.perf_counter() - draft_start
        # 3) one target forward: a ragged TARGET_VERIFY over [x0, d_1..d_ℓ] per request when drafting, else
        #    SGLang's own DECODE forward over the anchors (a plain step costs what no speculation costs)
        verify_start = time.perf_counter()
        logits_output, row_mask, rows_cpu = self._verify_forward(batch, anchors, draft_ids, verify_lens, seq_lens)
        verify_seconds = time.perf_counter() - verify_start
        # 4) lossless verification
        flat_logits = logits_output.next_token_logits[:, :self.vocab_size]                 # [Σrows, V]
        if not drafting and not lookup_only:     # rows = anchors: the next token straight from the target
            accepted = torch.zeros(num_reqs, dtype=torch.int32, device=self.device)
            out_ids = torch.full((num_reqs, width), -1, dtype=torch.int64, device=self.device)   # [R, W]
            out_ids[:, 0] = flat_logits.argmax(-1) if all_greedy else sample_tokens(
                logits_to_probs(flat_logits, sampling), sampling, self.generator)
        elif all_greedy:   # argmax of the ragged rows first: no [R, W, V] scatter
            target_ids = torch.zeros(num_reqs, width, dtype=torch.int64, device=self.device)  # [R, W]
            target_ids[row_mask] = flat_logits.argmax(-1)
            accepted, out_ids = ops.verify_greedy(draft_ids, target_ids, verify_lens)
        else:   # over the slots this step verifies (n ≤ G): p and q are [R, n + 1, V] / [R, n, V], not W wide
            used = max(max(rows_cpu) - 1, 1)
            target_probs = ragged_probs(flat_logits, row_mask[:, :used + 1], sampling)      # [R, n+1, V]
            draft_probs = block.draft_probs[:, :used]                                      # [R, n, V]
            accepted, out_ids = ops.verify_sampled(draft_ids[:, :used], draft_probs.to(target_probs.dtype), target_probs,
                                                   verify_lens, sampling.is_greedy, generator=self.generator,
                                                   offset=self.step)
            out_ids = F.pad(out_ids, (0, width - used - 1), value=-1)                      # [R, W]
        commit = accepted.to(torch.int64) + 1                                              # x0 + accepted drafts
        bonus = out_ids.gather(1, accepted.to(torch.int64).unsqueeze(1)).squeeze(1)        # [R]
        new_seq_lens = (seq_lens + commit).to(batch.seq_lens.dtype)
        if on_publish is not None:
            on_publish(new_seq_lens)
        # 5) committed tokens' target features extend the draft contexts, queued until the drafter next
        #    reads them (a run of plain steps is projected once)
        hidden = logits_output.hidden_states                                               # [Σrows, n·H]
        commit_cpu = commit.tolist()                                                       # sync: per-request commit
        if commit_cpu != rows_cpu:   # keep each request's first `commit` rows (x0 + accepted drafts)
            row_starts = itertools.accumulate([0] + rows_cpu[:-1])
            keep = [s + i for s, n in zip(row_starts, commit_cpu) for i in range(n)]
            hidden = hidden[torch.tensor(keep, dtype=torch.int64, device=hidden.device)]   # [Σcommit, n·H]
        else:        # the queue outlives this step: own the rows rather than the engine's output buffer
            hidden = hidden.clone()
        self.contexts.defer_many(rids, hidden, commit_cpu, seq_lens_cpu)
        logits_output.hidden_states = None
        self.step += 1
        step_seconds = time.perf_counter() - started
        num_verified, num_accepted = self.metrics.record_step(
            survival=survival, verify_lens=verify_lens, accepted=accepted, num_rows=sum(rows_cpu),
            predicted_seconds=1.0 / sps_profile.lookup(table, sum(rows_cpu)),
            verify_seconds=verify_seconds, step_seconds=step_seconds, drafted=drafting,
            draft_seconds=draft_seconds, between_seconds=between)
        if self.gate is not None and lookup_only:       # neither kind the gate prices; counts toward exploring
            self.gate.record_lookup_only()
        elif self.gate is not None:
            accepted_sq = int(accepted.to(torch.int64).square().sum()) if drafting else 0
            self.gate.record(drafting, num_reqs=num_reqs, verified=num_verified, accepted=num_accepted,
                             num_rows=sum(rows_cpu), seconds=step_seconds - flush_seconds, accepted_sq=accepted_sq,
                             table=table)
        drafter_rows = slice(None)           # rows whose verified block is the drafter's (its confidence applies)
        if looked_up:
            self._record_lookups(looked_up, verify_lens, accepted, sampling)
            keep = torch.ones(num_reqs, dtype=torch.bool)
            keep[list(looked_up)] = False
            drafter_rows = keep.to(self.device)
        if self.online_calibration is not None and drafting and block.conf_logits is not None:
            cal = self.online_calibration
            if cal.observe(block.conf_logits[drafter_rows, :self.draft_gamma], verify_lens[drafter_rows],
                           accepted[drafter_rows]):                                  # refitted: next steps use it
                self.sts_temperatures = cal.temperatures.to(self.device, self.sts_temperatures.dtype)
                self.sts_biases = cal.biases.to(self.device, self.sts_temperatures.dtype)
                self.metrics.calibration = (cal.temperatures.tolist(), cal.biases.tolist())
        if self.rounds_log is not None and drafting:
            self.rounds_log.record(None if block.conf_logits is None
                                   else block.conf_logits[drafter_rows, :self.draft_gamma],
                                   verify_lens[drafter_rows], accepted[drafter_rows],
                                   sampling.temperature[drafter_rows])
        next_token_ids = out_ids.clamp(min=0).reshape(-1)                                  # [R·W], -1 -> 0 padding
        self._last_decode_end, self._last_drafted = (None if lookup_only else time.perf_counter()), drafting
        return GenerationBatchResult(
            logits_output=logits_output, next_token_ids=next_token_ids, accept_lens=commit.to(torch.int32),
            next_draft_input=make_draft_input_v2(bonus_tokens=bonus, new_seq_lens=new_seq_lens),
            speculative_num_draft_tokens=width, new_seq_lens=new_seq_lens, can_run_cuda_graph=False)
