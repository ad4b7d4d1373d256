"""The dspark_sglang SGLang plugin without a server: flag parsing and transport, validation messages,
drafter checks, the worker swap and the ragged-verify attention hooks."""
from __future__ import annotations

import argparse
import json
import pickle

import pytest
import torch

from dspark_sglang.serving import cli_args
from dspark_sglang.serving.cli_args import DSparkServeConfig

from test.unit.checkpoint_factory import build_checkpoint, drafter_config_dict, target_config, write_checkpoint


# ------------------------------------------------------------------ config (no sglang needed)
@pytest.mark.parametrize("kwargs,message", [
    ({"policy": "fastest"}, "--dspark-policy must be one of"),
    ({"min_verify": -1}, "--dspark-min-verify must be >= 0"),
    ({"min_verify": 3, "max_verify": 2}, "--dspark-max-verify must be >= --dspark-min-verify"),
    ({"block_size": 0}, "--dspark-block-size must be in [1, 64]"),
    ({"threshold": 1.5}, "--dspark-threshold must be in [0, 1]"),
    ({"sps_table": "/nonexistent/sps.json"}, "--dspark-sps-table must be 'auto' or an existing JSON file"),
    ({"sts": "/nonexistent/sts.json"}, "--dspark-sts must be an existing JSON file"),
    ({"draft_gate": "sometimes"}, "--dspark-draft-gate must be one of auto, off"),
    ({"online_calibration": "on"}, "--dspark-online-calibration must be one of auto, off"),
])
def test_config_rejects_bad_values_by_flag_name(kwargs, message):
    with pytest.raises(ValueError) as err:
        DSparkServeConfig(**kwargs)
    assert message in str(err.value)


def test_verify_bounds_clip_to_block():
    assert DSparkServeConfig().verify_bounds(4) == (0, 4)
    assert DSparkServeConfig(min_verify=1, max_verify=9).verify_bounds(4) == (1, 4)
    with pytest.raises(ValueError, match="exceeds the usable verify length"):
        DSparkServeConfig(min_verify=5).verify_bounds(4)


def test_parser_group_and_namespace_roundtrip():
    parser = argparse.ArgumentParser()
    cli_args.add_cli_args(parser)
    cli_args.add_cli_args(parser)          # idempotent
    ns = parser.parse_args(["--dspark-policy", "lagged-topk", "--dspark-max-verify", "3", "--dspark-reprofile"])
    values = cli_args.values_from_namespace(ns)
    config = DSparkServeConfig.from_dict(values)
    assert (config.policy, config.max_verify, config.reprofile, config.sps_table) == ("lagged-topk", 3, True, "auto")
    assert cli_args.values_from_namespace(argparse.Namespace())["policy"] == "alg1"


# ------------------------------------------------------------------ with sglang
sglang = pytest.importorskip("sglang")


@pytest.fixture(scope="module")
def hooked():
    """Register the plugin and apply its hooks in this process (as load_plugins() does)."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    from dspark_sglang.serving import plugin

    plugin.register()
    HookRegistry.apply_hooks()
    return plugin


@pytest.mark.sglang
def test_flags_reach_server_args_and_survive_pickle(hooked, tmp_path):
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    assert any(a.dest == "dspark_policy" for a in parser._actions)
    args = parser.parse_args(["--model-path", str(tmp_path), "--dspark-policy", "static", "--dspark-min-verify", "1"])
    server_args = ServerArgs.from_cli_args(args)
    assert getattr(server_args, cli_args.ATTR)["policy"] == "static"
    clone = pickle.loads(pickle.dumps(server_args))     # what the spawn into the scheduler does
    config = cli_args.config_from_server_args(clone)
    assert (config.policy, config.min_verify) == ("static", 1)


@pytest.mark.sglang
def test_bad_flag_value_stops_parsing(hooked, tmp_path):
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    args = parser.parse_args(["--model-path", str(tmp_path), "--dspark-threshold", "2"])
    with pytest.raises(ValueError, match="--dspark-threshold must be in"):
        ServerArgs.from_cli_args(args)


@pytest.mark.sglang
def test_create_worker_swaps_dspark_only(hooked, tmp_path):
    from sglang.srt.server_args import ServerArgs
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    from dspark_sglang.serving.worker import DSparkServeWorker

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    server_args = ServerArgs.from_cli_args(parser.parse_args(["--model-path", str(tmp_path)]))
    assert SpeculativeAlgorithm.DSPARK.create_worker(server_args) is DSparkServeWorker
    builtin = ServerArgs.from_cli_args(parser.parse_args(["--model-path", str(tmp_path), "--dspark-builtin-worker"]))
    assert SpeculativeAlgorithm.DSPARK.create_worker(builtin) is not DSparkServeWorker


# ------------------------------------------------------------------ drafter checks
def _target_dir(tmp_path, cfg):
    d = tmp_path / "target"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    return str(d)


@pytest.mark.sglang
def test_check_drafter_accepts_matching_checkpoint(hooked, tmp_path):
    _, target = build_checkpoint(str(tmp_path / "ok"))
    assert hooked.check_drafter(str(tmp_path / "ok"), _target_dir(tmp_path, target))["block_size"] == 4


@pytest.mark.sglang
@pytest.mark.parametrize("case", ["missing_dir", "no_weights", "wrong_layers", "no_path", "bad_draft_vocab"])
def test_check_drafter_names_the_problem(hooked, tmp_path, case):
    target = target_config()
    model = _target_dir(tmp_path, target)
    path = str(tmp_path / "drafter")
    if case == "no_weights":
        write_checkpoint(path, drafter_config_dict(target), None)
    elif case == "wrong_layers":
        build_checkpoint(path)
        cfg = json.loads((tmp_path / "drafter" / "config.json").read_text())
        cfg["target_layer_ids"] = [1, 99]
        write_checkpoint(path, cfg, None)
    elif case == "bad_draft_vocab":                     # refused at startup, not when the worker loads it
        build_checkpoint(path)
        (tmp_path / "drafter" / "draft_vocab.json").write_text("[3, 2]")
    with pytest.raises(ValueError) as err:
        hooked.check_drafter(None if case == "no_path" else path, model)
    message = str(err.value)
    assert message.startswith("DSpark:")
    if case == "no_path":
        assert "--speculative-draft-model-path" in message
    else:
        assert path in message
    if case == "wrong_layers":
        assert "target_layer_ids" in message
    if case == "bad_draft_vocab":
        assert "draft_vocab.json" in message and "strictly increasing" in message


# ------------------------------------------------------------------ ragged verify hooks
@pytest.mark.sglang
def test_ragged_extend_metadata_hook(hooked):
    """Rows [2, 1, 3] -> extend lens [2, 1, 3], starts [0, 2, 3], seq_lens + rows."""
    from types import SimpleNamespace

    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    rows = torch.tensor([2, 1, 3], dtype=torch.int32)
    fb = SimpleNamespace(forward_mode=ForwardMode.TARGET_VERIFY, seq_lens=torch.tensor([10, 5, 7]),
                         spec_info=SimpleNamespace(dspark_rows=rows, dspark_max_rows=3), batch_size=3)
    called = []
    seq, lens, start, mask = hooked._around_build_extend_metadata(lambda *a: called.append(a), None, fb)
    assert not called and mask is None
    assert lens.tolist() == [2, 1, 3] and start.tolist() == [0, 2, 3] and seq.tolist() == [12, 6, 10]
    plain = SimpleNamespace(forward_mode=ForwardMode.TARGET_VERIFY, spec_info=SimpleNamespace())
    hooked._around_build_extend_metadata(lambda *a: called.append(a), None, plain)
    assert len(called) == 1
