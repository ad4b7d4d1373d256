"""`SpeculativeDecoder`: chain-drafting speculative decoding of an HF target with a DSpark drafter.

One round per active request (DSpark §1):
  1. the drafter proposes γ drafts x_1..x_γ from the anchor x0 (the last committed token);
  2. verify_len ℓ = γ, or the static-threshold length from `ops.confidence_survival` (leading slots whose
     calibrated confidence c_k ≥ threshold);
  3. the target runs [x0, x_1..x_ℓ] in one forward;
  4. `ops.verify_greedy` (all-greedy batch) or `ops.verify_sampled` (target probs from the SAME
     `logits_to_probs` as the drafter's q) accepts a prefix and emits a correction / bonus token;
  5. the anchor + accepted drafts are committed (target KV cropped to them, their target features appended
     to the drafter's context); the emitted token becomes the next anchor.
A request ends at EOS (also inside the accepted drafts) or after max_new_tokens.

Batch-1 mode (`batched=False`) runs each request alone with a `TargetSequence` (DynamicCache + crop):
the paper's protocol. Batched mode runs all requests' target forwards in one padded `TargetBatch` forward
and all drafts in one drafter forward.
"""
from __future__ import annotations

from typing import Sequence

import torch

from dspark_sglang import ops
from dspark_sglang.drafter import DSparkDrafter
from dspark_sglang.evaluation.records import RequestResult, RoundRecord
from dspark_sglang.sampling import SamplingBatch, logits_to_probs, sample_tokens
from dspark_sglang.target import HFTarget, TargetOutput


def check_drafter_matches_target(drafter: DSparkDrafter, target: HFTarget) -> None:
    """Raise ValueError naming every mismatch between a drafter and the target it drafts for."""
    d, t = drafter.config, target.config
    problems = []
    for name, ours, theirs in (("hidden_size", d.hidden_size, t.hidden_size),
                               ("vocab_size", d.vocab_size, t.vocab_size),
                               ("num_target_layers", d.num_target_layers, t.num_hidden_layers)):
        if ours != theirs:
            problems.append(f"drafter {name}={ours} but the target has {theirs}")
    if tuple(d.target_layer_ids) != tuple(target.target_layer_ids):
        problems.append(f"drafter target_layer_ids={list(d.target_layer_ids)} but the target captures "
                        f"{list(target.target_layer_ids)}")
    if problems:
        raise ValueError("drafter does not fit the target: " + "; ".join(problems))


class _SequentialSlots:
    """Batch-1 target slots: each request has its own `TargetSequence`, run one after another."""

    def __init__(self, target: HFTarget, num_reqs: int) -> None:
        self.seqs = [target.new_sequence() for _ in range(num_reqs)]

    def forward(self, reqs: Sequence[int], windows: Sequence[torch.Tensor]) -> list[TargetOutput]:
        return [self.seqs[r].verify(w) for r, w in zip(reqs, windows)]

    def commit(self, req: int, num_tokens: int) -> None:
        self.seqs[req].commit(num_tokens)

    def release(self, req: int) -> None:
        self.seqs[req] = None


def append_committed(result: RequestResult, tokens: Sequence[int], eos_ids: set[int] | frozenset[int],
                     max_new_tokens: int) -> bool:
    """Append a round's committed tokens to `result`, cutting after an EOS (also one inside the accepted
    drafts) or at max_new_tokens; True when the request is done.

    Example:
        >>> r = RequestResult(prompt_len=3); append_committed(r, [5, 2, 6], {2}, 10), r.output_ids
        (True, [5, 2])
    """
    for tok in tokens:
        result.output_ids.append(tok)
        if tok in eos_ids:
            result.finished_by_eos = True
            return True
        if len(result.output_ids) >= max_new_tokens:
            return True
    return False


def _select(sampling: SamplingBatch, rows: torch.Tensor) -> SamplingBatch:
    return SamplingBatch(sampling.temperature[rows], sampling.top_k[rows], sampling.top_p[rows])


class SpeculativeDecoder:
    """Runs DSpark speculative decoding offline and records every round.

    Args:
        target:           the verification target (its target_layer_ids must be the drafter's).
        drafter:          a DSpark drafter sharing the target's embed_tokens / lm_head.
        threshold:        static confidence threshold for the verify length (None: verify all γ drafts).
        sts_temperatures: [γ] STS temperatures for c_k = σ(logit_k / T_k) (None: ones).

    Example:
        >>> dec = SpeculativeDecoder(target, drafter)  # doctest: +SKIP
        >>> res = dec.generate([prompt_ids], 64, SamplingBatch.greedy(1))[0]  # doctest: +SKIP
        >>> res.output_ids[:5], len(res.rounds)  # doctest: +SKIP
    """

    def __init__(self, target: HFTarget, drafter: DSparkDrafter, threshold: float | None = None,
                 sts_temperatures: Sequence[float] | None = None) -> None:
        check_drafter_matches_target(drafter, target)
        gamma = drafter.config.block_size
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1]; got {threshold}")
        if threshold is not None and drafter.confidence_head is None:
            raise ValueError("a confidence threshold needs a drafter with a confidence head "
                             "(enable_confidence_head is false)")
        sts = [1.0] * gamma if sts_temperatures is None else [float(x) for x in sts_temperatures]
        if len(sts) != gamma or not all(x > 0 for x in sts):
            raise ValueError(f"sts_temperatures must be {gamma} positive floats (one per block slot); got {sts}")
        self.target = target
        self.drafter = drafter
        self.threshold = threshold
        self.sts = torch.tensor(sts, dtype=torch.float32, device=target.device)              # [γ]
        self.eos_ids = set(target.eos_token_ids)

    @property
    def block_size(self) -> int:
        return self.drafter.config.block_size

    @torch.no_grad()
    def generate(self, prompts: Sequence[torch.Tensor], max_new_tokens: int, sampling: SamplingBatch,
                 generator: torch.Generator | None = None, batched: bool = True) -> list[RequestResult]:
        """Generate for R prompts.

        Args:
            prompts:        R tensors [T_r] int64 (already chat-formatted token ids).
            max_new_tokens: per request.
            sampling:       R rows of temperature / top-k / top-p (0 temperature = greedy).
            generator:      RNG for the first token, the drafts and the verification seeds.
            batched:        one padded target forward per round for all requests (True) or each request
                            alone with its own DynamicCache (False; the paper's batch-1 protocol when R=1).
        Returns:
            R RequestResults in prompt order.
        """
        num_reqs, device = len(prompts), self.target.device
        if sampling.num_reqs != num_reqs:
            raise ValueError(f"sampling has {sampling.num_reqs} rows for {num_reqs} prompts")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
        sampling = sampling.to(device)
        slots = self.target.new_batch(num_reqs) if batched else _SequentialSlots(self.target, num_reqs)
        dcache = self.drafter.new_cache(num_reqs)
        results = [RequestResult(prompt_len=int(p.numel())) for p in prompts]

        # Prefill: commit the prompts, seed the drafter context, take the first token from the target.
        outs = slots.forward(range(num_reqs), prompts)
        for r, (p, out) in enumerate(zip(prompts, outs)):
            slots.commit(r, p.numel())
            self.drafter.append_context(dcache, r, out.hidden, torch.arange(p.numel(), device=device))
        last_logits = torch.stack([out.logits[-1] for out in outs])                            # [R, V]
        first = sample_tokens(logits_to_probs(last_logits, sampling), sampling, generator)     # [R]
        anchors = first.clone()                                                                # [R]
        anchor_pos = torch.tensor([p.numel() for p in prompts], dtype=torch.int64, device=device)  # [R]
        active = []
        for r in range(num_reqs):
            if not append_committed(results[r], [int(first[r])], self.eos_ids, max_new_tokens):   # sync: first tokens
                active.append(r)
            else:
                self._finish(r, slots, dcache)

        step = 0
        while active:
            active = self._round(active, slots, dcache, anchors, anchor_pos, sampling, generator, results,
                                 max_new_tokens, step)
            step += 1
        return results

    def _round(self, active, slots, dcache, anchors, anchor_pos, sampling, generator, results,
               max_new_tokens, step) -> list[int]:
        gamma, device = self.block_size, self.target.device
        block = self.drafter.propose(dcache, anchors, anchor_pos, sampling, generator)
        rows = torch.tensor(active, device=device)
        draft_ids = block.draft_ids[rows]                                                      # [A, γ]
        draft_probs = block.draft_probs[rows]                                                  # [A, γ, V]
        conf = None
        if block.conf_logits is not None:
            conf_logits = block.conf_logits[rows].float()                                      # [A, γ]
            conf = torch.sigmoid(conf_logits / self.sts)                                       # [A, γ]
        if self.threshold is not None:
            _, verify_lens = ops.confidence_survival(conf_logits, self.sts, self.threshold)    # [A] int32
        else:
            verify_lens = torch.full((len(active),), gamma, dtype=torch.int32, device=device)
        lens = verify_lens.tolist()                                                            # sync: verify lengths

        windows = [torch.cat([anchors[r:r + 1], draft_ids[i, :lens[i]]]) for i, r in enumerate(active)]
        outs = slots.forward(active, windows)
        vocab = outs[0].logits.shape[-1]
        # Rows past ℓ_r are never read by verification; fill them with zeros (a uniform distribution).
        target_logits = torch.zeros(len(active), gamma + 1, vocab, device=device)              # [A, γ+1, V]
        for i, out in enumerate(outs):
            target_logits[i, :lens[i] + 1] = out.logits
        sub = _select(sampling, rows)
        if bool(sub.is_greedy.all()):                                                          # sync: mode
            accept_lens, out_ids = ops.verify_greedy(draft_ids, target_logits.argmax(-1), verify_lens)
        else:
            target_probs = logits_to_probs(target_logits, sub)                                 # [A, γ+1, V]
            accept_lens, out_ids = ops.verify_sampled(draft_ids, draft_probs, target_probs, verify_lens,
                                                      sub.is_greedy, generator=generator, offset=step)
        accept_list, out_list = accept_lens.tolist(), out_ids.tolist()                         # sync: results
        conf_list = conf.tolist() if conf is not None else None

        still_active = []
        for i, r in enumerate(active):
            a = accept_list[i]
            slots.commit(r, a + 1)                                   # anchor + accepted drafts
            positions = anchor_pos[r] + torch.arange(a + 1, device=device)
            self.drafter.append_context(dcache, r, outs[i].hidden[:a + 1], positions)
            results[r].rounds.append(RoundRecord(accept_len=a, verify_len=lens[i],
                                                 confidence=None if conf_list is None else conf_list[i]))
            new_tokens = out_list[i][:a + 1]
            anchors[r] = new_tokens[-1]
            anchor_pos[r] += a + 1
            if append_committed(results[r], new_tokens, self.eos_ids, max_new_tokens):
                self._finish(r, slots, dcache)
            else:
                still_active.append(r)
        return still_active

    @staticmethod
    def _finish(req: int, slots, dcache) -> None:
        slots.release(req)
        dcache.drop(req)
