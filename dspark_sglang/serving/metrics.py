"""DSpark serving metrics: Prometheus gauges/counters (through SGLang's `/metrics` with
`--enable-metrics`, which runs prometheus_client in multiprocess mode) and a periodic log line.

Rolling over the last `WINDOW` verify steps:
  dspark:mean_accept_length        committed tokens per request-step (accepted drafts + 1, τ)
  dspark:mean_verify_budget        verified drafts ℓ_r per request-step
  dspark:predicted_step_seconds    1 / SPS(B) of the step's verify rows
  dspark:measured_step_seconds     wall time of the whole DSpark step (draft + schedule + verify)
  dspark:measured_verify_seconds   wall time of the target verify forward alone
  dspark:measured_draft_seconds    wall time of drafting and planning (the drafter or prompt lookup,
                                   survival, verify lengths); step − verify − draft is the bookkeeping
  dspark:measured_between_steps_seconds  engine time between two consecutive decode steps (SGLang's
                                   scheduling and output processing, outside the DSpark step; prefills
                                   and idle gaps excluded)
  dspark:survival_calibration_error  |mean predicted survival − observed acceptance| over verified slots
  dspark:drafted_step_fraction     steps that ran the drafter (the rest were plain steps, `DraftGate`)
Counters: dspark:verify_steps_total, dspark:accepted_drafts_total, dspark:verified_drafts_total,
dspark:request_steps_total (request-steps: Δverified_drafts / Δrequest_steps is the mean verify budget per
request over any interval a client chooses), dspark:prompt_lookup_blocks_total (request-steps that verified a
prompt-lookup block instead of the drafter's, `serving.prompt_lookup`), dspark:shared_lookup_blocks_total (those
of them copied from an earlier request's answer, `serving.shared_corpus`).
"""
from __future__ import annotations

import logging
from collections import deque

import torch

logger = logging.getLogger("dspark_sglang.metrics")

WINDOW = 200


class DSparkMetrics:
    def __init__(self, enabled: bool, log_interval: int, gamma: int) -> None:
        self.enabled = enabled
        self.log_interval = log_interval
        self.gamma = gamma
        self.reset()
        self._prom = self._make_prometheus() if enabled else None

    def reset(self) -> None:
        self.steps = 0
        self.window = deque(maxlen=WINDOW)   # per step: (reqs, committed, verified, pred_s, step_s, verify_s,
                                             #            drafted, draft_s)
        self.between = deque(maxlen=WINDOW)  # per step: (seconds from the previous decode step's end to its start,)
        self.calib = deque(maxlen=WINDOW)    # per step: (Σ predicted a over verified slots, Σ labels, slots)
        # running sums of the three windows' columns (kept with each append / eviction: a snapshot, taken every
        # step for the gauges, costs O(1) instead of O(WINDOW) Python work)
        self._window_sums = [0.0] * 8
        self._between_sums = [0.0]
        self._calib_sums = [0.0] * 3
        self.totals = {"accepted_drafts": 0, "verified_drafts": 0, "request_steps": 0, "prompt_lookup_blocks": 0,
                       "shared_lookup_blocks": 0}
        self.calibration: tuple[list[float], list[float]] | None = None   # online (T_k, b_k) in use, once refitted

    @staticmethod
    def _push(window: deque, sums: list[float], row: tuple) -> None:
        """Append `row` to `window`, keeping `sums` (one per column) equal to the window's column sums."""
        if len(window) == window.maxlen:
            for i, value in enumerate(window[0]):
                sums[i] -= value
        window.append(row)
        for i, value in enumerate(row):
            sums[i] += value

    @staticmethod
    def _make_prometheus():
        from prometheus_client import Counter, Gauge

        def gauge(name, doc):
            return Gauge(name, doc, multiprocess_mode="mostrecent")

        return {
            "accept": gauge("dspark:mean_accept_length", "Committed tokens per request-step (accepted drafts + 1)"),
            "budget": gauge("dspark:mean_verify_budget", "Verified draft tokens per request-step"),
            "pred": gauge("dspark:predicted_step_seconds", "Predicted verify step time 1/SPS(B)"),
            "meas": gauge("dspark:measured_step_seconds", "Measured DSpark step time (draft+schedule+verify)"),
            "verify": gauge("dspark:measured_verify_seconds", "Measured target verify forward time"),
            "draft": gauge("dspark:measured_draft_seconds", "Measured drafting and planning time"),
            "between": gauge("dspark:measured_between_steps_seconds",
                             "Engine time between consecutive decode steps (outside the DSpark step)"),
            "calib": gauge("dspark:survival_calibration_error",
                           "|mean predicted survival - observed acceptance| over verified slots"),
            "drafted": gauge("dspark:drafted_step_fraction", "Fraction of steps that ran the drafter"),
            "steps": Counter("dspark:verify_steps", "DSpark verify steps"),
            "acc_total": Counter("dspark:accepted_drafts", "Accepted draft tokens"),
            "ver_total": Counter("dspark:verified_drafts", "Verified draft tokens"),
            "req_total": Counter("dspark:request_steps", "Request-steps (requests verified, summed over steps)"),
            "lookup_total": Counter("dspark:prompt_lookup_blocks",
                                    "Request-steps that verified a prompt-lookup block instead of the drafter's"),
            "shared_total": Counter("dspark:shared_lookup_blocks",
                                    "Request-steps whose prompt-lookup block came from an earlier request's answer"),
        }

    def record_lookups(self, num_blocks: int, num_shared: int = 0) -> None:
        """`num_blocks` requests of the current step verified a prompt-lookup block, `num_shared` of them
        copied from an earlier request's answer."""
        self.totals["prompt_lookup_blocks"] += num_blocks
        self.totals["shared_lookup_blocks"] += num_shared
        if self._prom is not None:
            self._prom["lookup_total"].inc(num_blocks)
            self._prom["shared_total"].inc(num_shared)

    def record_step(self, *, survival: torch.Tensor, verify_lens: torch.Tensor, accepted: torch.Tensor,
                    num_rows: int, predicted_seconds: float, verify_seconds: float, step_seconds: float,
                    drafted: bool = True, draft_seconds: float = 0.0,
                    between_seconds: float | None = None) -> tuple[int, int]:
        """survival [R, γ], verify_lens [R], accepted [R] (drafts accepted, ≤ verify_lens); `drafted` False
        for a plain step (no drafter, ℓ = 0); `draft_seconds` the time spent drafting and planning;
        `between_seconds` the engine's time since the previous decode step ended (None after a prefill or
        an idle gap).
        Returns the step's (verified, accepted) draft counts."""
        num_reqs = int(verify_lens.shape[0])
        slots = torch.arange(survival.shape[1], device=survival.device).unsqueeze(0)
        verified = slots < verify_lens.unsqueeze(1)                                 # [R, γ]
        labels = (slots < accepted.unsqueeze(1)) & verified
        num_verified = int(verify_lens.sum())          # sync: metrics are host numbers
        num_accepted = int(accepted.sum())
        if drafted:
            self._push(self.calib, self._calib_sums,
                       (float(survival[verified].sum()), int(labels.sum()), num_verified))
        self._push(self.window, self._window_sums, (num_reqs, num_accepted + num_reqs, num_verified, predicted_seconds,
                                                    step_seconds, verify_seconds, int(drafted), draft_seconds))
        if between_seconds is not None:
            self._push(self.between, self._between_sums, (between_seconds,))
        self.totals["accepted_drafts"] += num_accepted
        self.totals["verified_drafts"] += num_verified
        self.totals["request_steps"] += num_reqs
        self.steps += 1
        if self._prom is not None:
            snap = self.snapshot()
            self._prom["accept"].set(snap["mean_accept_length"])
            self._prom["budget"].set(snap["mean_verify_budget"])
            self._prom["pred"].set(snap["predicted_step_seconds"])
            self._prom["meas"].set(snap["measured_step_seconds"])
            self._prom["verify"].set(snap["measured_verify_seconds"])
            self._prom["draft"].set(snap["measured_draft_seconds"])
            self._prom["between"].set(snap["measured_between_steps_seconds"])
            self._prom["calib"].set(snap["survival_calibration_error"])
            self._prom["drafted"].set(snap["drafted_step_fraction"])
            self._prom["steps"].inc()
            self._prom["acc_total"].inc(num_accepted)
            self._prom["ver_total"].inc(num_verified)
            self._prom["req_total"].inc(num_reqs)
        if self.log_interval and self.steps % self.log_interval == 0:
            logger.info("DSpark %s", self.log_suffix().strip(", "))
        return num_verified, num_accepted

    def snapshot(self) -> dict:
        w = self._window_sums
        reqs = w[0] or 1
        steps = len(self.window) or 1
        pred_sum, label_sum, slots = self._calib_sums
        return {
            "steps": self.steps,
            "mean_accept_length": w[1] / reqs,
            "mean_verify_budget": w[2] / reqs,
            "predicted_step_seconds": w[3] / steps,
            "measured_step_seconds": w[4] / steps,
            "measured_verify_seconds": w[5] / steps,
            "measured_draft_seconds": w[7] / steps,
            "measured_between_steps_seconds": self._between_sums[0] / len(self.between) if self.between else 0.0,
            "survival_calibration_error": abs(pred_sum - label_sum) / slots if slots else 0.0,
            "drafted_step_fraction": w[6] / steps if self.window else 1.0,
            **self.totals,
        }

    def log_suffix(self) -> str:
        s = self.snapshot()
        return (f", dspark τ: {s['mean_accept_length']:.2f}, budget/req: {s['mean_verify_budget']:.2f}, "
                f"step pred/meas: {s['predicted_step_seconds'] * 1e3:.1f}/{s['measured_step_seconds'] * 1e3:.1f} ms "
                f"(draft {s['measured_draft_seconds'] * 1e3:.1f}, verify {s['measured_verify_seconds'] * 1e3:.1f}), "
                f"between steps: {s['measured_between_steps_seconds'] * 1e3:.1f} ms, "
                f"calib err: {s['survival_calibration_error']:.3f}, drafted: {s['drafted_step_fraction']:.2f}"
                + ("" if not s["prompt_lookup_blocks"] else
                   f", lookup blocks: {s['prompt_lookup_blocks'] / max(s['request_steps'], 1):.2f}"
                   f" (shared {s['shared_lookup_blocks'] / max(s['request_steps'], 1):.2f})")
                + ("" if self.calibration is None else
                   ", online T: " + "/".join(f"{t:.2f}" for t in self.calibration[0])
                   + " b: " + "/".join(f"{b:+.2f}" for b in self.calibration[1])))
