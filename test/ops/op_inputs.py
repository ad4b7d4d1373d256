"""Random inputs for the op tests (shared by parity, distribution and benchmark code)."""
from __future__ import annotations

import torch


def chain_probs(num_reqs: int, gamma: int, vocab: int, *, dtype=torch.float32, device="cpu",
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Target p [R, γ+1, V], draft q [R, γ, V] close enough to p for mixed accept/reject, drafts ~ q."""
    base = torch.randn(num_reqs, gamma + 1, vocab, generator=generator) * 2.0
    target_probs = torch.softmax(base, -1)
    noise = torch.randn(num_reqs, gamma, vocab, generator=generator)
    draft_probs = torch.softmax(base[:, :gamma] + noise, -1)
    draft_ids = torch.multinomial(draft_probs.reshape(-1, vocab), 1, generator=generator).reshape(num_reqs, gamma)
    return (draft_ids.to(device), draft_probs.to(device=device, dtype=dtype),
            target_probs.to(device=device, dtype=dtype))


def verify_lens(num_reqs: int, gamma: int, device="cpu", generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.randint(0, gamma + 1, (num_reqs,), generator=generator, dtype=torch.int32).to(device)


def survival(num_reqs: int, gamma: int, device="cpu", generator: torch.Generator | None = None) -> torch.Tensor:
    """Non-increasing rows in (0, 1]: cumulative products of confidences."""
    conf = torch.rand(num_reqs, gamma, generator=generator) ** 0.3
    return conf.cumprod(-1).to(device)


def sps_table(size: int, *, jagged: bool = True, device="cpu", generator: torch.Generator | None = None) -> torch.Tensor:
    """A non-increasing SPS(B) profile: flat steps (tile sizes) with drops, as measured on hardware."""
    b = torch.arange(size, dtype=torch.float64)
    steps = torch.floor(b / 16) if jagged else b / 16
    table = 100.0 / (1.0 + 0.08 * steps) * (1 + 0.01 * torch.rand(size, generator=generator, dtype=torch.float64))
    return table.cummin(0).values.to(device)
