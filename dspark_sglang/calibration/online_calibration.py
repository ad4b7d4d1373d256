"""`OnlineCalibration`: per-position confidence calibration kept up to date on live verify outcomes.

Offline STS (`sts.py`) fits one temperature per block position, once, on held-out prompts:
c_k = σ(z_k / T_k). Served traffic differs (code completions, other languages), and a temperature
alone cannot move a confidence near ½: the shipped drafter's prefix-survival ECE after offline STS was
1.8 % on gsm8k but 7.5–10.4 % on humaneval / mbpp, and with the alg1 policy the rolling calibration
error on verified slots was 0.13–0.29. This class refits, per position k, an affine map of the raw
logit on the server's own recent outcomes:

    c_k = σ(z_k / T_k + b_k)

What a verify step reveals: for request r with ℓ_r verified drafts and a_r accepted, slot k (0-based)
is observed iff k < ℓ_r and k ≤ a_r (its prefix was accepted, so its own acceptance was decided); its
label is k < a_r — exactly what c_k predicts, P(slot k accepted | slots before it accepted). Per
position a ring buffer keeps the last `window` (z_k, label) pairs; every `refit_every` drafted steps
(u_k = 1/T_k, b_k) is refitted by Newton's method on the buffer's log loss, with Gaussian priors around
the offline (1/T_k, 0) worth `prior_samples` observations, so a rarely reached position stays near its
offline calibration. T_k is kept in [0.05, 20] like STS's grid.

Replayed on the logged rounds of `benchmark/train/serving_acceptance.py` (every draft verified, the
refit running as in the server; `benchmark/train/online_calibration_replay.py`), the ECE of prefix survival
drops from 1.8–10.4 % (offline STS) to 0.7–2.3 % in every dataset × temperature cell.

Lossless: the calibration used at step t depends only on outcomes of steps before t, never on the
block being verified (reference note §7), like the draft gate.
"""
from __future__ import annotations

import numpy as np
import torch

T_MIN, T_MAX = 0.05, 20.0


class OnlineCalibration:
    """Per-position temperatures and biases refitted from verify outcomes (host-side state, tiny).

    Example:
        >>> cal = OnlineCalibration(torch.ones(2), refit_every=1, prior_samples=1.0)
        >>> z = torch.full((64, 2), 3.0)                     # confident: σ(3) = 0.95
        >>> cal.observe(z, verify_lens=torch.full((64,), 1), accepted=torch.zeros(64, dtype=torch.int32))
        True
        >>> bool(cal.confidence(z)[0, 0] < 0.1), float(cal.temperatures[1]), float(cal.biases[1])
        (True, 1.0, 0.0)
    """

    def __init__(self, temperatures: torch.Tensor, *, window: int = 1024, refit_every: int = 8,
                 prior_samples: float = 8.0, newton_steps: int = 8) -> None:
        if window < 1 or refit_every < 1 or prior_samples <= 0 or newton_steps < 1:
            raise ValueError("OnlineCalibration: window, refit_every and newton_steps must be >= 1 and "
                             f"prior_samples > 0; got {window}, {refit_every}, {prior_samples}, {newton_steps}")
        self.offline = temperatures.detach().to("cpu", torch.float64).clamp(T_MIN, T_MAX)     # [γ]
        self.gamma = int(self.offline.numel())
        self.temperatures = self.offline.clone()                                            # [γ] T_k in use
        self.biases = torch.zeros(self.gamma, dtype=torch.float64)                          # [γ] b_k in use
        self.window, self.refit_every = window, refit_every
        self.prior_samples, self.newton_steps = prior_samples, newton_steps
        self._z = torch.zeros(self.gamma, window, dtype=torch.float64)                      # [γ, N] logits
        self._y = torch.zeros(self.gamma, window, dtype=torch.float64)                      # [γ, N] labels
        self._count = [0] * self.gamma                                                      # total seen
        self._steps = 0

    def num_observed(self, position: int) -> int:
        """Observations of slot `position` in the buffer (≤ window)."""
        return min(self._count[position], self.window)

    def confidence(self, conf_logits: torch.Tensor) -> torch.Tensor:
        """c = σ(z / T + b) for raw logits [..., γ] (float64, host)."""
        return torch.sigmoid(conf_logits.to("cpu", torch.float64) / self.temperatures + self.biases)

    def observe(self, conf_logits: torch.Tensor, verify_lens: torch.Tensor, accepted: torch.Tensor) -> bool:
        """Record one drafted step: conf_logits [R, γ] raw confidence logits (−inf where a slot was not
        drafted), verify_lens [R] drafts verified, accepted [R] drafts accepted. Refits every
        `refit_every` calls; returns whether this call refitted (the calibration may have changed)."""
        # numpy on the host: a step costs a few µs per observed position instead of ~10 torch ops per position
        z = conf_logits.detach().to("cpu", torch.float64).numpy()                          # [R, γ]
        lens = verify_lens.detach().to("cpu", torch.int64).numpy()[:, None]                 # [R, 1]
        acc = accepted.detach().to("cpu", torch.int64).numpy()[:, None]                     # [R, 1]
        slots = np.arange(self.gamma)[None, :]                                              # [1, γ]
        seen = (slots < lens) & (slots <= acc) & np.isfinite(z)                             # [R, γ]
        label = (slots < acc).astype(np.float64)                                            # [R, γ]
        z_buf, y_buf = self._z.numpy(), self._y.numpy()                                     # views of [γ, N]
        for k in np.flatnonzero(seen.any(axis=0)).tolist():
            zk, yk = z[seen[:, k], k], label[seen[:, k], k]
            n = zk.size
            if n > self.window:
                zk, yk, n = zk[-self.window:], yk[-self.window:], self.window
            idx = (np.arange(n) + self._count[k]) % self.window
            z_buf[k, idx], y_buf[k, idx] = zk, yk
            self._count[k] += n
        self._steps += 1
        if self._steps % self.refit_every == 0:
            self.refit()
            return True
        return False

    def refit(self) -> None:
        """Damped Newton on each position's penalised log loss in (u = 1/T, b): a step is halved until the
        loss decreases (the loss is flat where every observation agrees, and a full step overshoots)."""
        for k in range(self.gamma):
            n = self.num_observed(k)
            if n == 0:
                continue
            z, y = self._z[k, :n], self._y[k, :n]
            u0 = 1.0 / float(self.offline[k])
            # prior curvatures: `prior_samples` observations at σ = ½ (curvature z²/4 in u, 1/4 in b)
            ku, kb = self.prior_samples * float((z * z).mean()) / 4.0, self.prior_samples / 4.0

            def loss(u: float, b: float) -> float:
                x = u * z + b
                return float((torch.nn.functional.softplus(x) - y * x).sum()) \
                    + 0.5 * ku * (u - u0) ** 2 + 0.5 * kb * b * b

            u, b = 1.0 / float(self.temperatures[k]), float(self.biases[k])
            current = loss(u, b)
            for _ in range(self.newton_steps):
                p = torch.sigmoid(u * z + b)
                w = p * (1 - p)
                g_u = float(((p - y) * z).sum()) + ku * (u - u0)
                g_b = float((p - y).sum()) + kb * b
                h_uu, h_ub, h_bb = float((w * z * z).sum()) + ku, float((w * z).sum()), float(w.sum()) + kb
                det = h_uu * h_bb - h_ub * h_ub
                if det <= 1e-12:
                    break
                d_u, d_b = (h_bb * g_u - h_ub * g_b) / det, (h_uu * g_b - h_ub * g_u) / det
                for _ in range(20):                       # backtracking: halve until the loss decreases
                    new_u = min(max(u - d_u, 1.0 / T_MAX), 1.0 / T_MIN)
                    new_b = b - d_b
                    new = loss(new_u, new_b)
                    if new <= current:
                        break
                    d_u, d_b = d_u / 2, d_b / 2
                else:
                    break
                converged = abs(new_u - u) < 1e-6 and abs(new_b - b) < 1e-6
                u, b, current = new_u, new_b, new
                if converged:
                    break
            self.temperatures[k], self.biases[k] = 1.0 / u, b
