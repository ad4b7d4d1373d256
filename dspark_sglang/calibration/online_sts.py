"""`OnlineTemperatures`: the per-position STS temperatures kept calibrated on live verify outcomes.

Offline STS (`sts.py`) fits T_1..T_γ once, on held-out prompts. In serving the traffic differs (code
completions, other languages) and the scheduler verifies the slots it is most confident about, so the
offline temperatures can be far off where it matters: with the alg1 policy the rolling calibration error
of survival on verified slots was 0.13–0.29 on humaneval (overconfident), against ≤ 0.07 when every slot
is verified. This class refits each position's temperature on the server's own recent outcomes.

What a verify step reveals: for request r with ℓ_r verified drafts and a_r accepted, slot k (0-based)
is observed iff k < ℓ_r and k ≤ a_r (its prefix was accepted, so its own acceptance was decided); its
label is k < a_r. That label is exactly what c_k = σ(z_k / T_k) predicts: P(slot k accepted | slots
before it accepted). Per position a ring buffer keeps the last `window` (z_k, label) pairs; every
`refit_every` drafted steps u_k = 1 / T_k is refitted by Newton's method on the log loss of the buffer,
with a Gaussian prior around the offline 1 / T_k worth `prior_samples` observations (so a position with
few observations stays near its offline value). Temperatures are clamped to [0.05, 20] like STS's grid.

Lossless: the temperatures used at step t depend only on outcomes of steps before t, never on the
block being verified (reference note §7), like the draft gate.
"""
from __future__ import annotations

import torch

T_MIN, T_MAX = 0.05, 20.0


class OnlineTemperatures:
    """Per-position temperatures refitted from verify outcomes (host-side state, tiny).

    Example:
        >>> cal = OnlineTemperatures(torch.ones(2), refit_every=1, prior_samples=1.0)
        >>> z = torch.full((64, 2), 3.0)                     # confident: σ(3) = 0.95
        >>> cal.observe(z, verify_lens=torch.full((64,), 1), accepted=torch.zeros(64, dtype=torch.int32))
        True
        >>> bool(cal.temperatures[0] > 3.0), float(cal.temperatures[1])   # slot 0 always rejected, 1 unseen
        (True, 1.0)
    """

    def __init__(self, temperatures: torch.Tensor, *, window: int = 1024, refit_every: int = 8,
                 prior_samples: float = 32.0, newton_steps: int = 8) -> None:
        if window < 1 or refit_every < 1 or prior_samples < 0 or newton_steps < 1:
            raise ValueError("OnlineTemperatures: window, refit_every and newton_steps must be >= 1 and "
                             f"prior_samples >= 0; got {window}, {refit_every}, {prior_samples}, {newton_steps}")
        self.offline = temperatures.detach().to("cpu", torch.float64).clamp(T_MIN, T_MAX)     # [γ]
        self.gamma = int(self.offline.numel())
        self.temperatures = self.offline.clone()                                            # [γ] current
        self.window, self.refit_every = window, refit_every
        self.prior_samples, self.newton_steps = prior_samples, newton_steps
        self._z = torch.zeros(self.gamma, window, dtype=torch.float64)                      # [γ, N] logits
        self._y = torch.zeros(self.gamma, window, dtype=torch.float64)                      # [γ, N] labels
        self._count = [0] * self.gamma                                                      # total seen
        self._steps = 0

    def num_observed(self, position: int) -> int:
        """Observations of slot `position` in the buffer (≤ window)."""
        return min(self._count[position], self.window)

    def observe(self, conf_logits: torch.Tensor, verify_lens: torch.Tensor, accepted: torch.Tensor) -> bool:
        """Record one drafted step: conf_logits [R, γ] raw confidence logits (−inf where a slot was not
        drafted), verify_lens [R] drafts verified, accepted [R] drafts accepted. Refits every
        `refit_every` calls; returns whether this call refitted (the temperatures may have changed)."""
        z = conf_logits.detach().to("cpu", torch.float64)                                   # [R, γ]
        lens = verify_lens.detach().to("cpu", torch.int64).unsqueeze(1)                     # [R, 1]
        acc = accepted.detach().to("cpu", torch.int64).unsqueeze(1)                         # [R, 1]
        slots = torch.arange(self.gamma).unsqueeze(0)                                       # [1, γ]
        seen = (slots < lens) & (slots <= acc) & torch.isfinite(z)                          # [R, γ]
        label = (slots < acc).to(torch.float64)                                             # [R, γ]
        for k in range(self.gamma):
            zk, yk = z[seen[:, k], k], label[seen[:, k], k]
            n = int(zk.numel())
            if n == 0:
                continue
            if n > self.window:
                zk, yk, n = zk[-self.window:], yk[-self.window:], self.window
            idx = (torch.arange(n) + self._count[k]) % self.window
            self._z[k, idx], self._y[k, idx] = zk, yk
            self._count[k] += n
        self._steps += 1
        if self._steps % self.refit_every == 0:
            self.refit()
            return True
        return False

    def refit(self) -> None:
        """Newton's method on each position's penalised log loss in u = 1/T."""
        for k in range(self.gamma):
            n = self.num_observed(k)
            if n == 0:
                continue
            z, y = self._z[k, :n], self._y[k, :n]
            u0 = 1.0 / float(self.offline[k])
            kappa = self.prior_samples * float((z * z).mean()) / 4.0     # a sample's curvature at σ = ½
            u = 1.0 / float(self.temperatures[k])
            for _ in range(self.newton_steps):
                p = torch.sigmoid(u * z)
                grad = float(((p - y) * z).sum()) + kappa * (u - u0)
                hess = float((p * (1 - p) * z * z).sum()) + kappa
                if hess <= 1e-12:
                    break
                u = min(max(u - grad / hess, 1.0 / T_MAX), 1.0 / T_MIN)
            self.temperatures[k] = 1.0 / u
