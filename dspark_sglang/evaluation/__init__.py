"""Offline acceptance evaluation of DSpark drafters on HF targets (`python/eval_acceptance.py`)."""
from dspark_sglang.evaluation.records import RequestResult, RoundRecord
from dspark_sglang.evaluation.runner import EvalConfig, run_evaluation
from dspark_sglang.evaluation.spec_decode import SpeculativeDecoder, check_drafter_matches_target
from dspark_sglang.evaluation.summary import format_table, summarize

__all__ = ["SpeculativeDecoder", "check_drafter_matches_target", "RoundRecord", "RequestResult", "EvalConfig",
           "run_evaluation", "summarize", "format_table"]
