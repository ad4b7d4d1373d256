"""SGLang servers for benchmarks: named configurations, start-or-attach, guaranteed shutdown.

A configuration is a name plus extra `sglang.launch_server` flags. `launched(...)`
(`dspark_sglang.serving.launcher`) starts one server on 127.0.0.1 (a free port, its own process group,
output to a log file), waits for `/health`, yields the base URL and always stops the whole process group
afterwards — on normal exit, on an exception, on Ctrl-C and on SIGTERM (`terminate_on_signals()` turns SIGTERM into KeyboardInterrupt so `finally`
blocks run). `attached(url)` wraps a server the user started; it is never stopped.

    with launched(model, config_flags("no-spec", drafter=None, dtype="float32"), log) as base_url: ...
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from dspark_sglang.serving.launcher import LOCALHOST, check_local_url, launched, wait_healthy  # noqa: F401 (re-exported)
from dspark_sglang.serving.launcher import sigterm_as_interrupt as terminate_on_signals  # noqa: F401


SWITCHES = {"nogate": ["--dspark-draft-gate", "off"], "nocal": ["--dspark-online-calibration", "off"],
            "plain": ["--dspark-max-verify", "0"], "nolookup": ["--dspark-prompt-lookup", "off"],
            "lookup7": ["--dspark-lookup-max-len", "7"], "noshared": ["--dspark-shared-lookup-tokens", "0"],
            "noctx": ["--dspark-context-cost", "off"], "ctxfixed": ["--dspark-context-cost", "fixed"]}
"""Suffixes of a dspark-<policy> configuration name and the flags they add."""


def split_variant(name: str) -> tuple[str, str | None]:
    """`dspark-alg1@ft` -> (`dspark-alg1`, `ft`): a DSPARK configuration served with drafter variant `ft`
    (`--drafter-variant ft=PATH`), so two drafters can be compared in one run on the same traffic."""
    base, sep, label = name.partition("@")
    return base, (label if sep else None)


def add_drafter_args(parser) -> None:
    """--drafter (the DSPARK configurations' drafter) and --drafter-variant LABEL=PATH (for NAME@LABEL)."""
    parser.add_argument("--drafter", default=None, help="DSpark drafter (default: the shipped one)")
    parser.add_argument("--drafter-variant", action="append", default=[], metavar="LABEL=PATH",
                        help="a second drafter, used by configurations named NAME@LABEL (e.g. dspark-alg1@ft)")


def drafter_for(name: str, args) -> str | None:
    """The drafter folder configuration `name` is served with: its @LABEL variant, else --drafter."""
    _, label = split_variant(name)
    if label is None:
        return args.drafter
    variants = parse_pairs("--drafter-variant", getattr(args, "drafter_variant", []),
                           "LABEL=PATH, e.g. ft=.cache/out_dspark_ft")
    if label not in variants:
        raise ValueError(f"configuration {name!r} names drafter variant {label!r}: pass --drafter-variant {label}=PATH")
    return variants[label]


def config_flags(name: str, *, drafter: str | None, dtype: str, ngram_tokens: int = 8) -> list[str]:
    """Extra `launch_server` flags of a named configuration.

    no-spec        plain decoding
    ngram          SGLang's NGRAM speculation (`ngram_tokens` draft tokens per step)
    dspark-static  DSPARK verifying the whole block every step
    dspark-alg1    DSPARK with the hardware-aware scheduler (paper Algorithm 1, the default policy)
    dspark-lagged-topk / dspark-threshold  the other policies
    dspark-<policy>-nogate  the same with the draft gate off (every step drafts)
    dspark-<policy>-nocal   the same with the online calibration off (offline STS)
    dspark-<policy>-plain   plain steps only (`--dspark-max-verify 0`): the worker's cost without drafting
    dspark-<policy>-nolookup  drafter blocks only (prompt lookup off); suffixes combine
    dspark-<policy>-lookup7   prompt-lookup blocks of at most 7 tokens (the default drafter's γ: no wider window)
    dspark-<policy>-noshared  prompt lookup in each request's own context only (no shared corpus of answers)
    dspark-<policy>-noctx     steps priced by SPS(B) alone (no context cost)
    dspark-<policy>-ctxfixed  the context cost at its one-row figure for every window width
    <dspark name>@LABEL       the same served with `drafter` (the caller resolves LABEL: `drafter_for`)
    """
    name, label = split_variant(name)
    if label is not None and not name.startswith("dspark-"):
        raise ValueError(f"unknown configuration {name}@{label!r}: only dspark-<policy> configurations take a drafter variant")
    common = ["--dtype", dtype, "--enable-metrics"]
    if name == "no-spec":
        return common
    if name == "ngram":
        return common + ["--speculative-algorithm", "NGRAM", "--speculative-num-draft-tokens", str(ngram_tokens)]
    if name.startswith("dspark-"):
        policy, switches = name.removeprefix("dspark-"), []
        while policy.rpartition("-")[2] in SWITCHES:            # peel known suffixes off the end
            policy, _, switch = policy.rpartition("-")
            switches.insert(0, switch)
        if policy not in ("static", "alg1", "lagged-topk", "threshold"):
            raise ValueError(f"unknown configuration {name!r}: dspark-<policy>[-nogate][-nocal][-plain][-nolookup][-lookup7][-noshared][-noctx][-ctxfixed], DSPARK policies "
                             "static, alg1, lagged-topk or threshold (e.g. dspark-alg1, dspark-alg1-nogate)")
        flags = common + ["--speculative-algorithm", "DSPARK", "--dspark-policy", policy]
        for switch in switches:
            flags += SWITCHES[switch]
        return flags + (["--speculative-draft-model-path", drafter] if drafter else [])
    raise ValueError(f"unknown configuration {name!r}: use no-spec, ngram or dspark-<policy>")


@contextlib.contextmanager
def attached(url: str) -> Iterator[str]:
    """A server the user runs: checked for health, never stopped."""
    base = check_local_url(url)
    wait_healthy(base, 30.0)
    yield base


def parse_pairs(flag: str, values: list[str], expected: str) -> dict[str, str]:
    """`KEY=VALUE` values of a repeatable `flag` into {key: value}; a malformed one names `expected`."""
    out = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{flag} {v!r}: expected {expected}")
        out[key] = value
    return out


def parse_attach(values: list[str]) -> dict[str, str]:
    """`NAME=URL` pairs of --attach into {name: url}."""
    pairs = parse_pairs("--attach", values, "NAME=URL, e.g. no-spec=http://127.0.0.1:30000")
    return {name: check_local_url(url) for name, url in pairs.items()}


def launch_flags(configs: list[str], args) -> dict[str, list[str]]:
    """Flags of every configuration the script must start itself (not in args.attach_urls); fills
    args.model_path with the packaged SmolLM2 when a server is started and none was given."""
    flags = {}
    for name in configs:
        if name not in args.attach_urls:
            try:
                flags[name] = config_flags(name, drafter=drafter_for(name, args), dtype=args.dtype)
            except ValueError as exc:
                raise SystemExit(f"--configs: {exc}")
            if getattr(args, "rounds", 1) > 1 or getattr(args, "interleave", False):
                # servers up together: an idle SGLang scheduler polls on a whole core unless told to sleep
                flags[name].append("--sleep-on-idle")
    if flags and args.model_path is None:
        from dspark_sglang.models import smollm2_path
        args.model_path = str(smollm2_path())
    return flags


def server_for(name: str, flags: dict[str, list[str]], args, out_dir):
    """The attached server of configuration `name`, or a launched one (log in out_dir/server_<name>.log)."""
    if name in args.attach_urls:
        return attached(args.attach_urls[name])
    return launched(args.model_path, flags[name], out_dir / f"server_{name}.log", device=args.device,
                    max_total_tokens=args.max_total_tokens)
