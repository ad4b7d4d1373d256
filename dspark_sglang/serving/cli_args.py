"""The `--dspark-*` server flags: argparse definitions and the validated `DSparkServeConfig`.

SGLang's `ServerArgs` is a msgspec Struct whose fields are fixed at import, so the plugin adds its
options to the parser (AROUND hook on `ServerArgs.add_cli_args`) and stores the parsed values under
the underscore attribute `server_args._dspark_cli` (AROUND hook on `ServerArgs.from_cli_args`). That
attribute is pickled with the record and so reaches the scheduler process. Nothing here imports
sglang.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass

POLICIES = ("static", "threshold", "alg1", "lagged-topk")
DRAFT_GATES = ("auto", "off")
ONLINE_CALIBRATION = ("auto", "off")
PROMPT_LOOKUP = ("auto", "off")
CONTEXT_COST = ("auto", "fixed", "off")
ATTR = "_dspark_cli"
"""Name of the attribute of ServerArgs that carries the plugin's values (a plain dict)."""


@dataclass(frozen=True, slots=True)
class DSparkServeConfig:
    """Serving-side DSpark settings (one per server)."""

    policy: str = "alg1"
    """Verify-length policy: static (whole block), threshold, alg1 (DSpark Alg. 1, early stop) or
    lagged-topk (budget from two-steps-old confidence, top-K of current survivals)."""
    sps_table: str = "auto"
    """`auto`: profile SPS(B) at engine start (cached on disk), or a path to a JSON table."""
    sts: str | None = None
    """Per-position STS temperatures: a JSON file (a list, or `{"temperatures": [...]}`); None = the
    drafter folder's sts.json when present (what fit_sts.py writes), "off" = no scaling."""
    min_verify: int = 0
    """Smallest verify length ℓ_r (draft tokens) per request and step."""
    max_verify: int | None = None
    """Largest verify length; None = the block size γ."""
    block_size: int | None = None
    """γ: draft tokens per step; None = the drafter checkpoint's `block_size`."""
    threshold: float = 0.5
    """Confidence threshold of the `threshold` policy, in [0, 1]."""
    reprofile: bool = False
    """Ignore a cached SPS profile and measure again."""
    context_cost: str = "auto"
    """`auto`: a step is priced 1/SPS(B) plus the attention cost of the batch's committed context (measured
    with the SPS profile, `scheduling.context_cost`), per context token more for wider verify windows;
    `fixed`: the same at the one-row figure whatever the window; `off`: by SPS(B) alone, as if every request
    had the profile's 64 tokens of context."""
    builtin_worker: bool = False
    """Fall back to SGLang's own DSPARK worker (and its server-arg handling)."""
    log_interval: int = 50
    """Log a DSpark metrics line every N verify steps (0 = never)."""
    draft_gate: str = "auto"
    """`auto`: with the alg1 and lagged-topk policies a step drafts only when the measured cost of
    drafting is predicted to pay off (`scheduling.draft_gate.DraftGate`), else it decodes one token per
    request without the drafter; `off`: every step drafts."""
    online_calibration: str = "auto"
    """`auto`: with a confidence head, each position's confidence c_k = σ(z_k / T_k + b_k) is refitted
    every few drafted steps on the server's own verify outcomes (`calibration.online_calibration`;
    lossless: past steps only); `off`: the offline STS temperatures stay fixed."""
    prompt_lookup: str = "auto"
    """`auto`: on drafted steps, a request whose context contains its last few tokens earlier may verify
    the tokens that followed them instead of the drafter's block, when their observed acceptance
    predicts the longer accepted run (`serving.prompt_lookup`; lossless) — on CPU hosts, whose verify
    rows are ragged (`uses_prompt_lookup`); `off`: drafter blocks only."""
    lookup_max_len: int = 15
    """Longest prompt-lookup block (tokens). Above the drafter's γ it widens the verify window to
    `lookup_max_len` + 1 rows: a request quoting its context verifies long copies in one step, while
    the drafter's blocks stay γ long (`verify_window`)."""
    shared_lookup_tokens: int = 1 << 18
    """Capacity (tokens) of the corpus of finished requests' answers that prompt lookup also searches
    (`serving.shared_corpus`; ≈ 230 bytes of index per token at worst, 60 MB at the default); 0 = each
    request's own context only."""
    rounds_log: str | None = None
    """Append every request's verify round (raw confidence logits, verified, accepted, temperature) as
    JSON lines to this file (rounds_log.py); None = off."""

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"--dspark-policy must be one of {', '.join(POLICIES)}; got {self.policy!r}")
        if self.min_verify < 0:
            raise ValueError(f"--dspark-min-verify must be >= 0; got {self.min_verify}")
        if self.max_verify is not None and self.max_verify < self.min_verify:
            raise ValueError(f"--dspark-max-verify must be >= --dspark-min-verify ({self.min_verify}); "
                             f"got {self.max_verify}")
        if self.block_size is not None and not 1 <= self.block_size <= 64:
            raise ValueError(f"--dspark-block-size must be in [1, 64]; got {self.block_size}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"--dspark-threshold must be in [0, 1]; got {self.threshold}")
        if self.draft_gate not in DRAFT_GATES:
            raise ValueError(f"--dspark-draft-gate must be one of {', '.join(DRAFT_GATES)}; got {self.draft_gate!r}")
        if self.online_calibration not in ONLINE_CALIBRATION:
            raise ValueError(f"--dspark-online-calibration must be one of {', '.join(ONLINE_CALIBRATION)}; "
                             f"got {self.online_calibration!r}")
        if self.context_cost not in CONTEXT_COST:
            raise ValueError(f"--dspark-context-cost must be one of {', '.join(CONTEXT_COST)}; got {self.context_cost!r}")
        if self.prompt_lookup not in PROMPT_LOOKUP:
            raise ValueError(f"--dspark-prompt-lookup must be one of {', '.join(PROMPT_LOOKUP)}; "
                             f"got {self.prompt_lookup!r}")
        if not 1 <= self.lookup_max_len <= 64:
            raise ValueError(f"--dspark-lookup-max-len must be in [1, 64]; got {self.lookup_max_len}")
        if self.shared_lookup_tokens < 0:
            raise ValueError(f"--dspark-shared-lookup-tokens must be >= 0 (0 = off); got {self.shared_lookup_tokens}")
        if self.log_interval < 0:
            raise ValueError(f"--dspark-log-interval must be >= 0; got {self.log_interval}")
        if self.sps_table != "auto" and not os.path.isfile(self.sps_table):
            raise ValueError(f"--dspark-sps-table must be 'auto' or an existing JSON file; got {self.sps_table!r}")
        if self.rounds_log is not None and not os.path.isdir(os.path.dirname(os.path.abspath(self.rounds_log))):
            raise ValueError(f"--dspark-rounds-log: the folder of {self.rounds_log!r} does not exist; create it first")
        if self.sts not in (None, "off") and not os.path.isfile(self.sts):
            raise ValueError(f"--dspark-sts must be an existing JSON file or 'off'; got {self.sts!r}")

    def verify_bounds(self, gamma: int) -> tuple[int, int]:
        """(min_len, max_len) clipped to the block size γ; raises when min_verify exceeds γ."""
        max_len = gamma if self.max_verify is None else min(self.max_verify, gamma)
        if self.min_verify > max_len:
            raise ValueError(f"--dspark-min-verify={self.min_verify} exceeds the usable verify length {max_len} "
                             f"(block size {gamma})")
        return self.min_verify, max_len

    def draft_gamma(self, trained: int) -> int:
        """γ: slots of the drafter's blocks — --dspark-block-size, or the checkpoint's `trained` block_size.

        Example:
            >>> DSparkServeConfig().draft_gamma(7), DSparkServeConfig(block_size=4).draft_gamma(7)
            (7, 4)
        """
        return trained if self.block_size is None else self.block_size

    def uses_prompt_lookup(self, device: str) -> bool:
        """Whether a server on `device` ("cpu", "cuda", ...) verifies prompt-lookup blocks. They verify
        fewer rows than the window (m ≤ G, and lookup-only steps verify some requests only), which needs
        the ragged verify rows wired into SGLang's CPU attention backend: `auto` is on for CPU hosts and
        off elsewhere, where every request verifies the whole window (--dspark-policy static).

        Example:
            >>> DSparkServeConfig().uses_prompt_lookup("cpu"), DSparkServeConfig().uses_prompt_lookup("cuda")
            (True, False)
        """
        return self.prompt_lookup == "auto" and device == "cpu"

    def verify_window(self, gamma: int, device: str = "cpu") -> int:
        """G: draft slots of the verify window (SGLang's speculative_num_draft_tokens = G + 1). The
        drafter's γ, widened to the longest prompt-lookup block when lookups are on (capped by
        --dspark-max-verify, never below γ).

        Example:
            >>> DSparkServeConfig().verify_window(7), DSparkServeConfig(max_verify=10).verify_window(7)
            (15, 10)
            >>> DSparkServeConfig(prompt_lookup="off").verify_window(7), DSparkServeConfig(lookup_max_len=4).verify_window(7)
            (7, 7)
            >>> DSparkServeConfig().verify_window(7, device="cuda")
            7
        """
        if not self.uses_prompt_lookup(device):
            return gamma
        longest = self.lookup_max_len if self.max_verify is None else min(self.lookup_max_len, self.max_verify)
        return max(gamma, longest)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> "DSparkServeConfig":
        return cls(**(values or {}))


_FLAGS = {  # dest -> (flag, argparse kwargs)
    "policy": ("--dspark-policy", dict(choices=POLICIES, default="alg1",
                                       help="DSpark verify-length policy (default alg1: Algorithm 1, scheduler on).")),
    "sps_table": ("--dspark-sps-table", dict(default="auto", metavar="PATH|auto",
                                             help="SPS(B) table JSON, or 'auto' to profile at start (cached).")),
    "sts": ("--dspark-sts", dict(default=None, metavar="PATH|off", help=(
        "STS temperatures JSON (a list or {\"temperatures\": [...]}); default: the drafter's sts.json "
        "when present; 'off' disables scaling."))),
    "min_verify": ("--dspark-min-verify", dict(type=int, default=0, help="Minimum verify length per request.")),
    "max_verify": ("--dspark-max-verify", dict(type=int, default=None,
                                               help="Maximum verify length per request (default: block size).")),
    "block_size": ("--dspark-block-size", dict(type=int, default=None,
                                               help="Draft block size γ (default: the drafter's block_size).")),
    "threshold": ("--dspark-threshold", dict(type=float, default=0.5,
                                             help="Confidence threshold of --dspark-policy threshold.")),
    "reprofile": ("--dspark-reprofile", dict(action="store_true", help="Re-measure the SPS profile.")),
    "context_cost": ("--dspark-context-cost", dict(choices=CONTEXT_COST, default="auto", help=(
        "auto (default): price a step by SPS(B) plus the attention cost of the requests' committed context "
        "(measured with the SPS profile), more per token for wider verify windows; fixed: the one-row cost "
        "per token whatever the window; off: by SPS(B) alone."))),
    "builtin_worker": ("--dspark-builtin-worker", dict(
        action="store_true", help="Use SGLang's built-in DSPARK worker instead of dspark_sglang's.")),
    "draft_gate": ("--dspark-draft-gate", dict(choices=DRAFT_GATES, default="auto", help=(
        "auto (default): with alg1 / lagged-topk, skip the drafter on steps where plain decoding is predicted "
        "to commit tokens faster (measured step costs); off: draft every step."))),
    "online_calibration": ("--dspark-online-calibration", dict(choices=ONLINE_CALIBRATION, default="auto", help=(
        "auto (default): refit each position's confidence calibration (temperature and offset) on live verify "
        "outcomes (past steps only); off: keep the offline STS temperatures."))),
    "prompt_lookup": ("--dspark-prompt-lookup", dict(choices=PROMPT_LOOKUP, default="auto", help=(
        "auto (default; CPU hosts only, it needs ragged verify rows): a request may verify a block copied from its own context (the tokens after an "
        "earlier occurrence of its last tokens) instead of the drafter's, when that is expected to be "
        "accepted longer; off: drafter blocks only."))),
    "lookup_max_len": ("--dspark-lookup-max-len", dict(type=int, default=15, help=(
        "Longest prompt-lookup block in tokens (default 15). Above the drafter's block size it widens the "
        "verify window, so that a request quoting its context verifies long copies in one step."))),
    "shared_lookup_tokens": ("--dspark-shared-lookup-tokens", dict(type=int, default=1 << 18, help=(
        "Prompt lookup also searches the answers of recently finished requests, up to this many tokens "
        "(default 262144); 0: each request's own context only."))),
    "log_interval": ("--dspark-log-interval", dict(type=int, default=50,
                                                   help="Log DSpark metrics every N verify steps (0 = off).")),
    "rounds_log": ("--dspark-rounds-log", dict(default=None, metavar="PATH", help=(
        "Append each request's verify round (raw confidence logits, verified/accepted drafts, temperature) "
        "as JSON lines to PATH, for acceptance and calibration analysis."))),
}


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Add the `--dspark-*` group to SGLang's server parser (idempotent)."""
    if any(a.dest == "dspark_policy" for a in parser._actions):
        return
    group = parser.add_argument_group("DSpark (dspark_sglang plugin)")
    for dest, (flag, kwargs) in _FLAGS.items():
        group.add_argument(flag, dest="dspark_" + dest, **kwargs)


def values_from_namespace(args: argparse.Namespace) -> dict:
    """The plugin's raw values from a parsed namespace (defaults for absent ones)."""
    return {dest: getattr(args, "dspark_" + dest, kwargs.get("default", False if
                          kwargs.get("action") == "store_true" else None))
            for dest, (_, kwargs) in _FLAGS.items()}


def config_from_server_args(server_args) -> DSparkServeConfig:
    """The validated config carried by a ServerArgs record (defaults when the plugin flags were absent)."""
    return DSparkServeConfig.from_dict(getattr(server_args, ATTR, None))
