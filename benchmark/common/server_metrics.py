"""Read a server's Prometheus `/metrics` (SGLang with `--enable-metrics`) into {sample name: value}.

Samples with labels are summed over their label sets (one scheduler process here). Used for the
DSpark verify budget: Δ dspark:verified_drafts_total / Δ dspark:request_steps_total over an interval.
"""
from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(base: str, timeout_s: float = 10.0) -> dict[str, float]:
    """All samples of `base`/metrics; {} when the endpoint is off or unreachable."""
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=timeout_s) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
    return out


def mean_verify_budget(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Verified drafts per request-step between two scrapes (None when the server is not DSPARK)."""
    key_v, key_r = "dspark:verified_drafts_total", "dspark:request_steps_total"
    if key_v not in after or key_r not in after:
        return None
    steps = after[key_r] - before.get(key_r, 0.0)
    return (after[key_v] - before.get(key_v, 0.0)) / steps if steps > 0 else None
