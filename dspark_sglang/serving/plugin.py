"""SGLang plugin entry point (`sglang.srt.plugins` group): flags, server-arg handling, worker swap.

`register()` is called by SGLang's `load_plugins()` in the launcher and in every scheduler process.
It registers AROUND hooks only (see /work/shared/notes/sglang-integration-paths.md):

* `ServerArgs.add_cli_args` / `ServerArgs.from_cli_args`: the `--dspark-*` flags; parsed values ride
  on `server_args._dspark_cli` into the scheduler process (cli_args.py).
* `arg_groups.speculative_hook._handle_dspark`: our server-arg handling for
  `--speculative-algorithm DSPARK` (validates the flags and the drafter checkpoint at start-up,
  declares γ+1 draft tokens, turns overlap off on CPU). The built-in handler refuses CPU.
* `SpeculativeAlgorithm.create_worker`: returns `DSparkServeWorker` for DSPARK.
* `spec_aux_hidden_state._resolve_dflash_aux_hidden_state`: lets the target's aux hidden-state capture
  accept a markov_rank-0 (DFlash) drafter, which our worker serves with `--dspark-policy static`; the
  built-in check exists for SGLang's own worker, which needs the Markov head.
* `IntelAMXAttnBackend._build_extend_metadata` / `.init_forward_metadata`: ragged TARGET_VERIFY
  (ℓ_r + 1 rows per request) for batches whose spec_info is our `RaggedVerifyInput`.

`--dspark-builtin-worker` leaves SGLang's own DSPARK handler and worker in place.
"""
from __future__ import annotations

import json
import logging
import os

from dspark_sglang.models import default_drafter
from dspark_sglang.serving import cli_args

logger = logging.getLogger(__name__)

_SA = "sglang.srt.server_args.ServerArgs"
_AMX = "sglang.srt.layers.attention.intel_amx_backend.IntelAMXAttnBackend"
_AUX = "sglang.srt.model_executor.model_runner_components.spec_aux_hidden_state"
DEFAULT_DRAFTER_DIR = str(default_drafter.DEFAULT_DRAFTER_DIR)
"""The drafter shipped with the package, used when --speculative-draft-model-path is not given."""

_registered = False


def register() -> None:
    """Entry point: register the hooks (idempotent)."""
    global _registered
    if _registered:
        return
    from dspark_sglang.serving import compat
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    compat.check_sglang_version()
    hooks = {
        f"{_SA}.add_cli_args": _around_add_cli_args,
        f"{_SA}.from_cli_args": _around_from_cli_args,
        "sglang.srt.arg_groups.speculative_hook._handle_dspark": _around_handle_dspark,
        "sglang.srt.speculative.spec_info.SpeculativeAlgorithm.create_worker": _around_create_worker,
        f"{_AUX}._resolve_dflash_aux_hidden_state": _around_resolve_aux_hidden_state,
        f"{_AMX}._build_extend_metadata": _around_build_extend_metadata,
        f"{_AMX}.init_forward_metadata": _around_init_forward_metadata,
    }
    for target, hook in hooks.items():
        HookRegistry.register(target, hook, HookType.AROUND)
    _registered = True


# ---------------------------------------------------------------------------------------- flags
def _around_add_cli_args(original, parser):
    original(parser)
    cli_args.add_cli_args(parser)


def _around_from_cli_args(original, *args, **kwargs):
    server_args = original(*args, **kwargs)
    namespace = args[-1] if args else kwargs["args"]
    values = cli_args.values_from_namespace(namespace)
    config = cli_args.DSparkServeConfig.from_dict(values)     # bad values stop the launcher here, by name
    setattr(server_args, cli_args.ATTR, values)
    draft_path = getattr(server_args, "speculative_draft_model_path", None)
    if (getattr(server_args, "speculative_algorithm", None) or "").upper() == "DSPARK" and draft_path \
            and not config.builtin_worker:
        # Before SGLang's own resolution reads the draft folder (its errors do not say what a DSpark
        # checkpoint needs); _around_handle_dspark checks again for Engine(server_args=...) callers.
        check_drafter(draft_path, server_args.model_path)
    return server_args


# ------------------------------------------------------------------------------- server args
def _target_config(model_path: str) -> dict:
    path = os.path.join(model_path, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"DSpark: cannot read the target config {path} (only local model folders are supported)")
    with open(path) as f:
        return json.load(f)


def check_drafter(draft_path: str | None, model_path: str) -> dict:
    """Validate the drafter checkpoint against the target; returns its config.json dict.

    Raises:
        ValueError: naming the path and every problem (missing folder, config or weights, contract).
    """
    from dspark_sglang.drafter.checkpoint import check_checkpoint

    if draft_path is None:
        raise ValueError(f"DSpark: no drafter checkpoint: pass --speculative-draft-model-path (the default "
                         f"{DEFAULT_DRAFTER_DIR} is not installed)")
    if not os.path.isdir(draft_path):
        raise ValueError(f"DSpark: drafter checkpoint {draft_path!r} is not a directory")
    target_config = _target_config(model_path)
    try:
        cfg, _ = check_checkpoint(draft_path, target_config)
    except (OSError, ValueError) as exc:     # FileNotFoundError, JSON errors, CheckpointContractError included
        raise ValueError(f"DSpark: invalid drafter checkpoint {draft_path!r}: {exc}") from exc
    return cfg


def _around_handle_dspark(original, server_args):
    from sglang.srt.arg_groups.overrides import declare_resolution
    from sglang.srt.arg_groups.model_override_base import resolving_view
    from sglang.srt.arg_groups.speculative_hook import _disable_overlap_schedule_for_cpu

    config = cli_args.config_from_server_args(server_args)
    if config.builtin_worker:
        return original(server_args)
    view = resolving_view(server_args)
    draft_path = view.speculative_draft_model_path
    if draft_path is None and os.path.isdir(DEFAULT_DRAFTER_DIR):
        draft_path = DEFAULT_DRAFTER_DIR
    drafter_cfg = check_drafter(draft_path, view.model_path)
    trained = int(drafter_cfg["block_size"])
    gamma = config.draft_gamma(trained)
    if gamma > trained:
        raise ValueError(f"DSpark: --dspark-block-size={gamma} exceeds the drafter's block_size {trained}")
    config.verify_bounds(gamma)
    if not drafter_cfg.get("enable_confidence_head", True) and config.policy != "static":
        raise ValueError(f"DSpark: drafter {draft_path} has no confidence head (enable_confidence_head=false), "
                         f"so --dspark-policy {config.policy} has no survivals to schedule with; "
                         "use --dspark-policy static")
    if view.attn_dp_size > 1 or view.tp_size > 1 or view.pp_size > 1:
        raise ValueError("DSpark (dspark_sglang worker): tensor/pipeline/DP-attention parallelism is not supported")
    if view.device != "cpu" and config.policy != "static":
        # Ragged verify rows are wired only into intel_amx (route B); other backends read uniform rows.
        raise ValueError(f"DSpark (dspark_sglang worker): --dspark-policy {config.policy} needs ragged verify, "
                         f"implemented for the CPU intel_amx backend only; on {view.device} use "
                         "--dspark-policy static or --dspark-builtin-worker")
    _disable_overlap_schedule_for_cpu(server_args)
    window = config.verify_window(gamma, view.device)
    declare_resolution(server_args, "dspark_sglang", speculative_draft_model_path=draft_path,
                       speculative_num_steps=1, speculative_eagle_topk=1,
                       speculative_num_draft_tokens=window + 1,
                       enable_mixed_chunk=False,
                       disable_overlap_schedule=True)
    logger.info("DSpark (dspark_sglang): drafter %s, γ=%d, verify window %d, policy %s", draft_path, gamma,
                window + 1, config.policy)


def _around_create_worker(original, self, *args, **kwargs):
    if self.is_dspark():
        server_args = args[0] if args else kwargs["server_args"]
        if not cli_args.config_from_server_args(server_args).builtin_worker:
            from dspark_sglang.serving.worker import DSparkServeWorker

            return DSparkServeWorker
    return original(self, *args, **kwargs)


def _around_resolve_aux_hidden_state(original, *args, **kwargs):
    """SGLang refuses markov_rank 0 while choosing the target layers to capture, because its own DSPARK
    worker needs the Markov head. Ours does not (a rank-0 drafter is DFlash: every slot sampled in
    parallel), so while our worker is in charge the check sees the rank clamped to ≥ 1; the layer
    choice it then makes reads only target_layer_ids, which the clamp leaves untouched."""
    server_args = kwargs.get("server_args")
    algorithm = kwargs.get("spec_algorithm")
    if server_args is None or algorithm is None or not algorithm.is_dspark() \
            or cli_args.config_from_server_args(server_args).builtin_worker:
        return original(*args, **kwargs)
    import msgspec
    from sglang.srt.speculative.dspark_components import dspark_config

    parse = dspark_config.parse_dspark_draft_config

    def parse_any_rank(*, draft_hf_config):
        parsed = parse(draft_hf_config=draft_hf_config)
        return parsed if parsed.require_markov() else msgspec.structs.replace(parsed, markov_rank=1)

    dspark_config.parse_dspark_draft_config = parse_any_rank
    try:
        return original(*args, **kwargs)
    finally:
        dspark_config.parse_dspark_draft_config = parse


# ------------------------------------------------------------- ragged TARGET_VERIFY (intel_amx)
def _ragged_rows(forward_batch):
    spec_info = forward_batch.spec_info
    if forward_batch.forward_mode.is_target_verify():
        return getattr(spec_info, "dspark_rows", None)
    return None


def _around_build_extend_metadata(original, self, forward_batch):
    rows = _ragged_rows(forward_batch)     # [bs] int32: ℓ_r + 1 verify rows per request
    if rows is None:
        return original(self, forward_batch)
    start_loc = rows.cumsum(0, dtype=rows.dtype) - rows
    return forward_batch.seq_lens + rows, rows, start_loc, None


def _around_init_forward_metadata(original, self, forward_batch):
    original(self, forward_batch)
    spec_info = forward_batch.spec_info
    if _ragged_rows(forward_batch) is not None:
        attn_logits, _ = self.forward_metadata
        self.forward_metadata = (attn_logits, spec_info.dspark_max_rows)
