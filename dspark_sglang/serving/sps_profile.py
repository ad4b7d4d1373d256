"""SPS(B) profiling at engine start, its on-disk cache, and the STS temperature file.

SPS(B) = target verify steps per second at B verify rows. At start-up the worker runs dummy ragged
TARGET_VERIFY forwards at a few B values (one request of B rows up to the block width, then requests
of full blocks), takes the fastest of a few repeats, and builds a dense non-increasing table
(`scheduling.sps.sps_table_from_points`). The points are cached as JSON under
`config.cache_dir()/sps/` keyed by model, dtype, device, SGLang version, block width and the build of our
extension (its kernels serve the CPU engine's attention, so a rebuilt extension re-profiles); the next
start reuses them unless `--dspark-reprofile`. `--dspark-sps-table PATH` reads
`{"batch_rows": [...], "step_seconds": [...]}` instead.

SPS(B) hardly includes attention (64 tokens of context, every dummy request reading the same slot), so the
profile also measures the context cost (`scheduling.context_cost.ContextCost`): `CONTEXT_PROBE_REQS` dummy
requests with `CONTEXT_PROBE_LEN` committed tokens each, in slots of their own so that their keys stream from
memory as a live batch's do, against the same requests at 64 tokens, at one row and at the full window per
request. It is cached with the points (`"context_cost"`); a cache written before it existed gains it at the
next start (about a second). `--dspark-context-cost off` prices steps by SPS(B) alone.

A cached profile is checked before it is reused: two quick timings (B = 1 and B = the block width, a
fraction of a second on CPU). When the cache is more than `STALE_RATIO` slower than the check at either
point, it was measured while something else loaded the host (a test suite, another server) and it would
mislead both the verify policy and the draft gate (one such profile predicted 63 ms per step for a
25 ms forward, and DSpark then served slower than plain decoding); when the two points have moved apart
by more than `STALE_RATIO` at two checks half a second apart (the cost of extra rows changed, which the
verify policy prices by), it no longer describes this host. Either way it is profiled again and
replaced. A check uniformly slower than the cache only logs a warning: the host is busy now, and the
quieter profile is kept.

The dummy forwards write K/V only into slot 0, SGLang's reserved padding slot, and read through
request-pool row 0 before any request exists, so they touch no live state; the context probe points the first
few request-pool rows at slots no request owns yet (reads only) and restores the rows afterwards.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time

import torch

from dspark_sglang import config as dspark_config
from dspark_sglang.scheduling.context_cost import ContextCost
from dspark_sglang.scheduling.sps import sps_lookup, sps_table_from_points

logger = logging.getLogger(__name__)

PROFILE_BUDGET_S = 6.0
"""Wall-clock bound of the start-up profile on CPU."""
CONTEXT_LEN = 64
"""Committed context length of the dummy requests."""
CONTEXT_PROBE_REQS = 4
"""Dummy requests of the context-cost probe."""
CONTEXT_PROBE_LEN = 2048
"""Committed context per request of the context-cost probe (capped by the KV pool and the context length)."""
STALE_RATIO = 1.25
"""A cached profile slower than the start-up check by more than this factor, or whose checked points moved
apart by more than it, is measured again."""
RECHECK_PAUSE_S = 0.5
"""Pause before the second start-up check of a profile that read "reshaped" at the first."""


def lookup(table: torch.Tensor, rows: int) -> float:
    return sps_lookup(table, rows)


def load_sts(path: str | None, gamma: int, drafter_dir: str | None = None) -> torch.Tensor:
    """[γ] float32 STS temperatures (see `DSparkServeConfig.sts`): `path` = a JSON list or
    {"temperatures": [...]}; None = the drafter folder's sts.json when it has one; "off" (or nothing
    found) = ones."""
    from dspark_sglang.calibration.sts import STS_FILE, read_temperatures

    if path is None and drafter_dir is not None and os.path.isfile(os.path.join(drafter_dir, STS_FILE)):
        path = os.path.join(drafter_dir, STS_FILE)
    if path is None or path == "off":
        return torch.ones(gamma, dtype=torch.float32)

    try:
        temps = read_temperatures(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--dspark-sts {path}: {exc}") from exc
    if len(temps) < gamma or any(t <= 0 for t in temps[:gamma]):
        raise ValueError(f"--dspark-sts {path}: needs >= {gamma} positive temperatures; got {temps!r}")
    logger.info("DSpark STS temperatures from %s: %s", path, [round(t, 3) for t in temps[:gamma]])
    return torch.tensor(temps[:gamma], dtype=torch.float32)


def cache_key(model_path: str, dtype: str, device: str, sglang_version: str, width: int,
              extension_build: str = "") -> str:
    raw = json.dumps([os.path.abspath(model_path), dtype, device, sglang_version, width, extension_build])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def extension_build() -> str:
    """Size and modification time of the loaded `dspark_sglang._C` library ("" when it is not loaded), how
    many of the target's linear layers the CPU host packed, whether its fused layer ops are on, and the
    packed_linear faces and thread-split size in force (each changes every step's cost)."""
    import sys

    from dspark_sglang.ops import native
    from dspark_sglang.serving.cpu_host import bootstrap, packed_linear

    module = sys.modules.get("dspark_sglang._C")
    path = getattr(module, "__file__", None)
    if not path or not os.path.isfile(path):
        return ""
    stat = os.stat(path)
    fused = int(bootstrap.is_active() and bootstrap.fused_layers_wanted())
    faces = f"{native.packed_linear_backend(torch.bfloat16)}/{native.packed_linear_backend(torch.float32)}"
    split = f"{module.packed_linear_parallel_macs():.6g}"
    return (f"{stat.st_size}:{stat.st_mtime_ns}:packed{packed_linear.stats()['packed_layers']}:fused{fused}"
            f":faces{faces}:split{split}")


def cache_path(key: str) -> str:
    return os.path.join(str(dspark_config.cache_dir()), "sps", f"{key}.json")


def sample_points(width: int, max_reqs: int) -> list[tuple[int, int]]:
    """(num_reqs, rows_per_req) shapes to time: B = 1..width for one request, then full blocks."""
    shapes = [(1, r) for r in sorted({1, max(1, width // 4), max(1, width // 2), width})]
    reqs = 2
    while reqs <= max_reqs:
        shapes.append((reqs, width))
        reqs *= 2
    return shapes


def _time_verify(worker, num_reqs: int, rows: int, repeats: int, context_len: int = CONTEXT_LEN,
                 own_slots: bool = False) -> float:
    """Fastest of `repeats` dummy TARGET_VERIFY forwards of `num_reqs` requests × `rows` rows after
    `context_len` committed tokens each. `own_slots`: request r reads request-pool row r, pointed at slots
    1 + r·context_len ... of its own (else every request reads row 0, all slot 0)."""
    from dspark_sglang.serving.verify_forward import RaggedVerifyInput
    from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode, ForwardBatch, ForwardMode

    runner = worker.model_runner
    device = worker.device
    total = num_reqs * rows
    seq_lens = torch.full((num_reqs,), context_len, dtype=torch.int64, device=device)
    positions = (seq_lens.unsqueeze(1) + torch.arange(rows, device=device)).reshape(-1)
    spec = RaggedVerifyInput(draft_token=torch.zeros(total, dtype=torch.int64, device=device), positions=positions,
                             draft_token_num=worker.num_draft_tokens, custom_mask=None,
                             capture_hidden_mode=CaptureHiddenMode.FULL)
    spec.set_rows(torch.full((num_reqs,), rows, dtype=torch.int32, device=device), rows)
    pool_rows = (torch.arange(num_reqs, dtype=torch.int64, device=device) if own_slots
                 else torch.zeros(num_reqs, dtype=torch.int64, device=device))
    req_to_token = runner.req_to_token_pool.req_to_token
    saved = req_to_token[:num_reqs].clone() if own_slots else None
    if own_slots:   # [R, context_len] distinct slots, none of them slot 0 (where the dummy K/V is written)
        slots = 1 + torch.arange(num_reqs * context_len, device=device).view(num_reqs, context_len)
        req_to_token[:num_reqs, :context_len] = slots.to(req_to_token.dtype)
    times = []
    try:
        for _ in range(repeats):
            fb = ForwardBatch(
                forward_mode=ForwardMode.TARGET_VERIFY, batch_size=num_reqs, input_ids=spec.draft_token,
                req_pool_indices=pool_rows, seq_lens=seq_lens,
                out_cache_loc=torch.zeros(total, dtype=torch.int64, device=device),
                seq_lens_sum=int(context_len * num_reqs), seq_lens_cpu=seq_lens.cpu(), positions=positions,
                spec_algorithm=runner.spec_algorithm, spec_info=spec, capture_hidden_mode=CaptureHiddenMode.FULL)
            plan = runner.kv_index_translator.own_plan(fb)
            plan.bind(fb, runner.kv_index_translator)
            start = time.perf_counter()
            with torch.no_grad():
                runner.forward(fb)
            if str(device).startswith("cuda"):
                torch.cuda.synchronize(device)     # kernels run asynchronously: time their completion
            times.append(time.perf_counter() - start)
    finally:
        if saved is not None:
            req_to_token[:num_reqs] = saved
    # min, not median: on a shared host the fastest repeat is the least disturbed by other load
    return min(times)


def probe_length(worker, width: int, num_reqs: int = CONTEXT_PROBE_REQS) -> int:
    """Committed tokens per request of the context probe: CONTEXT_PROBE_LEN, capped so that `num_reqs`
    requests fit the KV pool and a request-pool row (0 when they cannot hold 4× the base context, or the
    pool's size is unknown)."""
    runner = worker.model_runner
    req_to_token = runner.req_to_token_pool.req_to_token                      # [rows, max_context]
    pool_tokens = int(getattr(runner, "max_total_num_tokens", 0) or 0)     # unknown: do not guess, skip
    length = min(CONTEXT_PROBE_LEN, int(req_to_token.shape[1]) - width - 1, (pool_tokens - 1) // num_reqs)
    if int(req_to_token.shape[0]) < num_reqs or length < 4 * CONTEXT_LEN:
        return 0
    return length


def profile_context_cost(worker, width: int, repeats: int = 3) -> ContextCost:
    """Seconds per committed context token at one row and at `width` rows per request (see the module
    docstring); no cost when the pool is too small to probe."""
    length = probe_length(worker, width)
    if length == 0:
        logger.warning("DSpark context cost: the KV pool is too small to probe it; steps are priced by SPS(B) alone")
        return ContextCost.none()
    n = CONTEXT_PROBE_REQS
    per_token = []
    for rows in (1, width):
        short = _time_verify(worker, n, rows, repeats, CONTEXT_LEN, own_slots=True)
        long = _time_verify(worker, n, rows, repeats, length, own_slots=True)
        per_token.append(max(long - short, 0.0) / (n * (length - CONTEXT_LEN)))
    # a full window never reads a context token for less than one row does (timing noise at short windows)
    return ContextCost(per_token[0], max(per_token), width, CONTEXT_LEN)


def profile(worker, width: int, max_reqs: int, budget_s: float = PROFILE_BUDGET_S, probe_context: bool = True) -> dict:
    """Time dummy verify forwards; stops adding shapes once the budget is spent. `probe_context`: also
    measure the context cost (not with `--dspark-context-cost off`; a later start adds it)."""
    _time_verify(worker, 1, 1, repeats=1)   # warm-up
    deadline = time.perf_counter() + budget_s
    by_rows: dict[int, float] = {}
    for num_reqs, rows in sample_points(width, max_reqs):
        if time.perf_counter() > deadline and num_reqs > 1:
            break   # the single-request points (B = 1..W) are always measured
        b = num_reqs * rows
        by_rows[b] = min(by_rows.get(b, float("inf")), _time_verify(worker, num_reqs, rows, repeats=3))
    points = sorted(by_rows.items())
    out = {"batch_rows": [b for b, _ in points], "step_seconds": [t for _, t in points]}
    if probe_context:
        out["context_cost"] = profile_context_cost(worker, width).to_dict()
    return out


def cached_step_seconds(points: dict, rows: int) -> float:
    """The cached step time at `rows` verify rows (the nearest measured B at or above it, else the largest)."""
    for b, t in zip(points["batch_rows"], points["step_seconds"]):
        if b >= rows:
            return float(t)
    return float(points["step_seconds"][-1])


def check_cached(points: dict, checked: dict[int, float], ratio: float = STALE_RATIO) -> str:
    """Compare a cached profile with fresh timings {rows: seconds}: "stale" when the cache is more than
    `ratio` slower at some point (it was measured on a busier host); "reshaped" when the checked points'
    ratios to the cache differ by more than `ratio` (the cost of extra rows changed: on the 2-core dev
    host B = 16 read 1.5× its cached time at three starts in a row while B = 1 matched — the shape the
    verify policy prices by was wrong, not the level); "busy" when the fresh timings are uniformly more
    than `ratio` slower (the host is busier now); else "ok"."""
    ratios = [cached_step_seconds(points, rows) / max(seconds, 1e-9) for rows, seconds in checked.items()]
    if max(ratios) > ratio:
        return "stale"
    if max(ratios) / min(ratios) > ratio:
        return "reshaped"
    if min(ratios) < 1.0 / ratio:
        return "busy"
    return "ok"


def _quick_check(worker, width: int) -> dict[int, float]:
    """Fresh step times at B = 1 and B = width (one request; fastest of three each, after a warm-up)."""
    _time_verify(worker, 1, 1, repeats=1)
    return {1: _time_verify(worker, 1, 1, repeats=3), width: _time_verify(worker, 1, width, repeats=3)}


def _profile_to(path: str, worker, width: int, max_reqs: int, probe_context: bool = True) -> tuple[dict, float]:
    """A fresh profile, written atomically to `path`; also returns the seconds it took."""
    started = time.perf_counter()
    points = profile(worker, width, max_reqs, probe_context=probe_context)
    _write_points(path, points)
    return points, time.perf_counter() - started


def _write_points(path: str, points: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(points, f)
    os.replace(tmp, path)


def context_cost_of(points: dict, source: str) -> ContextCost | None:
    """The profile's context cost (None when it has none); raises ValueError naming `source` and the field."""
    if "context_cost" not in points:
        return None
    try:
        return ContextCost.from_dict(points["context_cost"])
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{source}: bad \"context_cost\" ({exc}) -> fix: drop the field (or the file) and "
                         f"profile again") from exc


def _checked_points(worker, path: str, width: int, max_reqs: int, probe_context: bool = True) -> tuple[dict, str]:
    """The cached profile at `path` after its start-up check, re-profiled (and rewritten) when stale, or
    reshaped at two checks in a row; a cache without a context cost gains one (`probe_context`), written
    back only when the host is not busy."""
    try:
        with open(path) as f:
            points = json.load(f)
        if len(points["batch_rows"]) != len(points["step_seconds"]) or not points["batch_rows"]:
            raise ValueError("batch_rows and step_seconds differ in length or are empty")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("DSpark SPS(B): unreadable cache %s (%s); profiling again", path, exc)
        points, seconds = _profile_to(path, worker, width, max_reqs, probe_context)
        return points, f"re-profiled in {seconds:.1f} s, cached at {path}"
    checked = _quick_check(worker, width)
    verdict = check_cached(points, checked)
    if verdict == "reshaped":   # uneven load can read so once: it must persist a moment later
        time.sleep(RECHECK_PAUSE_S)
        checked = _quick_check(worker, width)
        verdict = check_cached(points, checked)
    described = ", ".join(f"B={b}: {1e3 * t:.1f} ms (cached {1e3 * cached_step_seconds(points, b):.1f})"
                          for b, t in checked.items())
    if verdict == "busy":
        logger.warning("DSpark SPS(B): the start-up check is slower than the cached profile (%s): the host "
                       "is busier than when it was profiled; keeping the cache (--dspark-reprofile measures "
                       "it again)", described)
    if verdict not in ("stale", "reshaped"):
        try:
            known = context_cost_of(points, path)
        except ValueError as exc:
            logger.warning("DSpark context cost: %s; probing it again", exc)
            known = None
        if known is None and probe_context:   # a cache written before the context probe existed
            points["context_cost"] = profile_context_cost(worker, width).to_dict()
            if verdict == "busy":             # measured under load: for this run only
                return points, f"cache {path}, checked, context cost probed (not cached: busy host)"
            _write_points(path, points)
            return points, f"cache {path}, checked, context cost added"
        return points, f"cache {path}, checked"
    if verdict == "stale":
        logger.warning("DSpark SPS(B): the cached profile was measured on a busier host (%s); profiling again",
                       described)
    else:
        logger.warning("DSpark SPS(B): the cost of extra verify rows has changed since the cached profile (%s); "
                       "profiling again", described)
    points, seconds = _profile_to(path, worker, width, max_reqs, probe_context)
    return points, f"re-profiled in {seconds:.1f} s, cached at {path}"


def load_or_profile(worker, serve_config) -> tuple[torch.Tensor, ContextCost]:
    """The SPS table for this server and its context cost: from --dspark-sps-table (its optional
    "context_cost" field; none without it), the disk cache, or a fresh profile. `--dspark-context-cost off`:
    no context cost whatever the profile says; `fixed`: its one-row figure for every window width."""
    from dspark_sglang.serving import compat

    width = worker.num_draft_tokens
    max_reqs = int(getattr(worker.model_runner, "max_running_requests", 8) or 8)
    max_rows = max_reqs * width
    if serve_config.sps_table != "auto":
        with open(serve_config.sps_table) as f:
            points = json.load(f)
        source = serve_config.sps_table
    else:
        runner = worker.model_runner
        key = cache_key(runner.model_config.model_path, str(runner.model_config.dtype), str(worker.device),
                        compat.installed_sglang_version() or "?", width, extension_build())
        path = cache_path(key)
        probe = serve_config.context_cost != "off"
        if os.path.isfile(path) and not serve_config.reprofile:
            points, source = _checked_points(worker, path, width, min(max_reqs, 8), probe)
        else:
            points, seconds = _profile_to(path, worker, width, min(max_reqs, 8), probe)
            source = f"profiled in {seconds:.1f} s, cached at {path}"
    table = sps_table_from_points(points["batch_rows"], points["step_seconds"], max_rows)
    context = context_cost_of(points, f"--dspark-sps-table {source}" if serve_config.sps_table != "auto" else source)
    if context is None or serve_config.context_cost == "off":
        context = ContextCost.none()
    elif serve_config.context_cost == "fixed":
        context = context.fixed()
    logger.info("DSpark SPS(B) (%s): %s; context cost %s", source,
                ", ".join(f"B={b}: {1 / t:.1f}/s" for b, t in zip(points["batch_rows"], points["step_seconds"])),
                "off" if context.is_zero else
                f"{1e9 * context.per_token_one_row:.0f} ns/token at 1 row, {1e9 * context.per_token_full:.0f} at "
                f"{context.width} rows (per request, beyond {context.base_context} tokens)")
    return table, context
