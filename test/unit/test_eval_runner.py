"""Evaluation runner / CLI plumbing that needs no model."""
import importlib.util
import json
from pathlib import Path

import pytest

from dspark_sglang.evaluation import EvalConfig, run_evaluation
from dspark_sglang.calibration.sts import read_temperatures as read_sts

CLI = Path(__file__).resolve().parents[2] / "python" / "eval_acceptance.py"


def _cli():
    spec = importlib.util.spec_from_file_location("eval_acceptance", CLI)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bad_dataset_path_fails_before_loading_any_model(tmp_path):
    cfg = EvalConfig(datasets=[str(tmp_path / "nope.jsonl")], target=str(tmp_path / "no-model"))
    with pytest.raises(FileNotFoundError, match="nope.jsonl does not exist"):
        run_evaluation(cfg)


def test_read_sts_accepts_list_or_dict(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([1.0, 2]))
    (tmp_path / "b.json").write_text(json.dumps({"temperatures": [0.5]}))
    (tmp_path / "c.json").write_text(json.dumps({"t": 1}))
    assert read_sts(tmp_path / "a.json") == [1.0, 2.0]
    assert read_sts(tmp_path / "b.json") == [0.5]
    with pytest.raises(ValueError, match="c.json: expected a JSON list"):
        read_sts(tmp_path / "c.json")


def test_cli_flags_map_to_config(tmp_path):
    cfg, json_path = _cli().parse_args([
        "--datasets", "a.jsonl", "b.jsonl", "--num-samples", "3", "--max-new-tokens", "9", "--temperature", "0",
        "--block-size", "5", "--target", str(tmp_path), "--threshold", "0.4", "--batch-size", "2",
        "--dtype", "bfloat16", "--json", "out.json"])
    assert cfg.datasets == ["a.jsonl", "b.jsonl"] and cfg.num_samples == 3 and cfg.max_new_tokens == 9
    assert cfg.temperature == 0.0 and cfg.block_size == 5 and cfg.threshold == 0.4 and cfg.batch_size == 2
    assert cfg.dtype == "bfloat16" and cfg.drafter == "random" and cfg.target == str(tmp_path)
    assert json_path == "out.json"
