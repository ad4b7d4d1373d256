"""The serving benchmarks' pure parts: per-level summaries, SLO tables, the scheduler check, the SSE client
(against a local fake server), configuration flags, attach URLs and the shipped coding sessions."""
from __future__ import annotations

import argparse
import http.server
import json
import math
import threading
from pathlib import Path

import pytest

from benchmark.common.chat_client import RequestResult, stream_chat
from benchmark.common.server_metrics import mean_verify_budget
from benchmark.common.servers import check_local_url, config_flags, launch_flags, parse_attach
from benchmark.common.sessions import load_sessions, turn_message
from benchmark.common.slo_analysis import (auto_anchors, best_at_slo, combine_rounds, percentile,
                                           scheduler_vs_fixed, scheduler_vs_fixed_paired, slo_table,
                                           summarize_level)
from benchmark.coding_session_replay import slope_per_1k, summarize

ROOT = Path(__file__).resolve().parents[2]


def _res(start, ttft, decode, tokens, accept=None, ok=True):
    return RequestResult(ok=ok, completion_tokens=tokens, ttft_s=ttft, decode_s=decode, end_to_end_s=ttft + decode,
                         accept_length=accept, start_s=start)


def test_percentile_interpolates():
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 90) == pytest.approx(4.6)
    assert math.isnan(percentile([], 50))


def test_summarize_level_counts_window_and_per_user():
    # two users: 11 tokens in 1 s of decode (10 tok/s after the first), 21 tokens in 1 s (20 tok/s)
    rs = [_res(0.0, 0.5, 1.0, 11, accept=2.0), _res(0.5, 0.5, 1.0, 21, accept=3.0), _res(0.0, 0, 0, 0, ok=False)]
    row = summarize_level("x", 2, rs, verify_budget=4.5)
    assert row["failed"] == 1 and row["output_tokens"] == 32
    assert row["window_s"] == pytest.approx(2.0)                   # first start 0.0 .. last end 0.5 + 1.5
    assert row["aggregate_tok_s"] == pytest.approx(16.0)
    assert row["per_user_tok_s_p50"] == pytest.approx(15.0)
    assert row["per_user_tok_s_p90"] == pytest.approx(19.0)
    assert row["accept_length_mean"] == pytest.approx(2.5) and row["verify_budget_mean"] == 4.5


def _row(config, conc, agg, p50):
    return {"config": config, "concurrency": conc, "aggregate_tok_s": agg, "per_user_tok_s_p50": p50}


ROWS = [_row("no-spec", 1, 10, 10.0), _row("no-spec", 4, 30, 7.5), _row("no-spec", 16, 60, 3.8),
        _row("dspark-alg1", 1, 20, 20.0), _row("dspark-alg1", 4, 56, 14.0), _row("dspark-alg1", 16, 90, 5.6),
        _row("dspark-static", 1, 21, 21.0), _row("dspark-static", 4, 50, 12.5), _row("dspark-static", 16, 70, 4.4)]


def test_best_at_slo_takes_highest_throughput_meeting_anchor():
    best = best_at_slo(ROWS, 7.0)
    assert best["no-spec"]["concurrency"] == 4
    assert best["dspark-alg1"]["concurrency"] == 4
    assert best_at_slo(ROWS, 50.0)["no-spec"] is None


def test_slo_table_ratios_and_auto_anchors():
    anchors = auto_anchors(ROWS)
    assert anchors == [3.8, 7.5, 10.0]                      # no-spec's own per-user speeds: it just meets each
    five = [_row("no-spec", c, 10 * c, v) for c, v in ((1, 13.1), (2, 7.08), (4, 7.67), (8, 7.54), (16, 5.51))]
    assert auto_anchors(five) == [5.5, 7.5, 13.1]           # spread from slowest to fastest, not the 3 slowest
    table = {(t["anchor_tok_s_per_user"], t["config"]): t for t in slo_table(ROWS, anchors)}
    assert table[(3.8, "dspark-alg1")]["best_aggregate_tok_s"] == 90
    assert table[(3.8, "dspark-alg1")]["ratio_to_baseline"] == pytest.approx(1.5)
    assert table[(10.0, "no-spec")]["ratio_to_baseline"] == pytest.approx(1.0)


def test_scheduler_vs_fixed_uses_the_better_reference():
    out = {s["concurrency"]: s for s in scheduler_vs_fixed(ROWS)}
    assert out[1]["best_reference"] == "dspark-static" and out[1]["ratio"] == pytest.approx(20 / 21)
    assert out[4]["best_reference"] == "dspark-static" and out[4]["ratio"] == pytest.approx(56 / 50)
    assert out[16]["ratio"] == pytest.approx(90 / 70)


def _round_row(config, conc, agg, round_index, accept=None):
    row = summarize_level(config, conc, [_res(0.0, 0.1, 1.0, 11, accept=accept)])
    return {**row, "aggregate_tok_s": agg, "round": round_index}


def test_combine_rounds_takes_medians_and_keeps_the_spread():
    rows = [_round_row("no-spec", 4, agg, i) for i, agg in enumerate((30.0, 10.0, 20.0))]
    rows += [_round_row("dspark-alg1", 4, agg, i, accept=1.5) for i, agg in enumerate((25.0, 35.0))]
    rows.append(_round_row("dspark-alg1", 8, 40.0, 0))
    by = {(r["config"], r["concurrency"]): r for r in combine_rounds(rows)}
    ns = by[("no-spec", 4)]
    assert ns["rounds"] == 3 and ns["aggregate_tok_s"] == 20.0
    assert (ns["aggregate_tok_s_min"], ns["aggregate_tok_s_max"]) == (10.0, 30.0)
    assert ns["requests"] == 3 and ns["output_tokens"] == 33 and ns["accept_length_mean"] is None
    assert by[("dspark-alg1", 4)]["aggregate_tok_s"] == 30.0 and by[("dspark-alg1", 4)]["accept_length_mean"] == 1.5
    assert by[("dspark-alg1", 8)]["rounds"] == 1 and by[("dspark-alg1", 8)]["aggregate_tok_s"] == 40.0


def test_scheduler_ratio_paired_within_rounds():
    """Round 0 ran on a fast host, round 1 on a slow one: pairing compares like with like."""
    rows = [_round_row("no-spec", 4, 40.0, 0), _round_row("dspark-alg1", 4, 44.0, 0),
            _round_row("no-spec", 4, 20.0, 1), _round_row("dspark-alg1", 4, 21.0, 1),
            _round_row("dspark-static", 4, 30.0, 1)]
    (paired,) = scheduler_vs_fixed_paired(rows)
    assert paired["rounds"] == 2
    assert paired["ratio_min"] == pytest.approx(21.0 / 30.0) and paired["ratio_max"] == pytest.approx(1.1)
    assert paired["ratio_median"] == pytest.approx((1.1 + 0.7) / 2)


def test_mean_verify_budget_from_counter_deltas():
    before = {"dspark:verified_drafts_total": 100.0, "dspark:request_steps_total": 40.0}
    after = {"dspark:verified_drafts_total": 160.0, "dspark:request_steps_total": 60.0}
    assert mean_verify_budget(before, after) == pytest.approx(3.0)
    assert mean_verify_budget({}, {"sglang:foo": 1.0}) is None


def test_config_flags_and_attach_validation():
    assert "--enable-metrics" in config_flags("no-spec", drafter=None, dtype="float32")
    flags = config_flags("dspark-alg1", drafter="/d", dtype="float32")
    assert flags[flags.index("--dspark-policy") + 1] == "alg1" and "/d" in flags
    assert "--dspark-draft-gate" not in flags
    nogate = config_flags("dspark-alg1-nogate", drafter=None, dtype="float32")
    assert nogate[nogate.index("--dspark-policy") + 1] == "alg1" and nogate[-2:] == ["--dspark-draft-gate", "off"]
    both = config_flags("dspark-lagged-topk-nogate-nocal", drafter=None, dtype="float32")
    assert both[both.index("--dspark-policy") + 1] == "lagged-topk"
    assert both[-4:] == ["--dspark-draft-gate", "off", "--dspark-online-calibration", "off"]
    plain = config_flags("dspark-alg1-plain", drafter=None, dtype="float32")
    assert plain[-2:] == ["--dspark-max-verify", "0"]
    assert config_flags("dspark-static-nolookup", drafter=None, dtype="float32")[-2:] == ["--dspark-prompt-lookup", "off"]
    assert config_flags("dspark-alg1-lookup7", drafter=None, dtype="float32")[-2:] == ["--dspark-lookup-max-len", "7"]
    assert config_flags("dspark-alg1-noshared", drafter=None, dtype="float32")[-2:] == ["--dspark-shared-lookup-tokens", "0"]
    assert config_flags("dspark-alg1-noctx", drafter=None, dtype="float32")[-2:] == ["--dspark-context-cost", "off"]
    assert config_flags("dspark-alg1-ctxfixed", drafter=None, dtype="float32")[-2:] == ["--dspark-context-cost", "fixed"]
    for bad in ("dspark-fast", "dspark-alg1-fast", "dspark-nogate"):
        with pytest.raises(ValueError, match="unknown configuration"):
            config_flags(bad, drafter=None, dtype="float32")
    with pytest.raises(ValueError, match="127.0.0.1"):
        check_local_url("http://10.0.0.1:30000")
    with pytest.raises(ValueError, match="NAME=URL"):
        parse_attach(["http://127.0.0.1:30000"])
    assert parse_attach(["a=http://127.0.0.1:1/"]) == {"a": "http://127.0.0.1:1"}


def test_drafter_variants_serve_a_second_drafter():
    import argparse
    from benchmark.common.servers import add_drafter_args, drafter_for
    p = argparse.ArgumentParser()
    add_drafter_args(p)
    args = p.parse_args(["--drafter", "/base", "--drafter-variant", "ft=/ft"])
    assert drafter_for("dspark-alg1", args) == "/base" and drafter_for("dspark-alg1-nolookup@ft", args) == "/ft"
    flags = config_flags("dspark-alg1-nolookup@ft", drafter=drafter_for("dspark-alg1-nolookup@ft", args), dtype="bfloat16")
    assert flags[flags.index("--dspark-policy") + 1] == "alg1" and flags[-2:] == ["--speculative-draft-model-path", "/ft"]
    assert "--dspark-prompt-lookup" in flags
    with pytest.raises(ValueError, match="--drafter-variant other=PATH"):
        drafter_for("dspark-alg1@other", args)
    with pytest.raises(ValueError, match="only dspark-<policy>"):
        config_flags("no-spec@ft", drafter="/ft", dtype="float32")
    bad = p.parse_args(["--drafter-variant", "ft"])
    with pytest.raises(ValueError, match="LABEL=PATH"):
        drafter_for("dspark-alg1@ft", bad)


@pytest.mark.parametrize("rounds", [1, 3])
def test_servers_up_together_sleep_when_idle(rounds):
    """--rounds > 1 keeps every server up at once: each gets --sleep-on-idle (an idle SGLang scheduler
    otherwise polls on a core); one round starts them one at a time and leaves the flag off."""
    args = argparse.Namespace(rounds=rounds, attach_urls={}, drafter=None, dtype="bfloat16", model_path="/m")
    flags = launch_flags(["no-spec", "dspark-alg1"], args)
    assert all(("--sleep-on-idle" in f) == (rounds > 1) for f in flags.values())


class _SSE(http.server.BaseHTTPRequestHandler):
    def do_POST(self):                                               # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert body["return_spec_tokens_details"] and body["stream"]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        events = [{"choices": [{"delta": {"role": "assistant"}}]},
                  {"choices": [{"delta": {"content": "Hel"}}]}, {"choices": [{"delta": {"content": "lo"}}]},
                  {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5},
                   "sglext": {"spec_tokens_details": {"spec_accept_length": 2.5, "spec_verify_ct": 2}}}]
        for e in events:
            self.wfile.write(f"data: {json.dumps(e)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *a):
        pass


def test_stream_chat_parses_usage_and_accept_length():
    srv = http.server.HTTPServer(("127.0.0.1", 0), _SSE)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        res = stream_chat(f"http://127.0.0.1:{srv.server_port}", [{"role": "user", "content": "hi"}], 5)
    finally:
        srv.shutdown()
    assert res.ok and res.text == "Hello"
    assert (res.prompt_tokens, res.completion_tokens, res.accept_length, res.verify_steps) == (7, 5, 2.5, 2)
    bad = stream_chat("http://127.0.0.1:9", [{"role": "user", "content": "hi"}], 5, timeout_s=2)
    assert not bad.ok and bad.error


def test_shipped_sessions_schema_and_size():
    sessions = load_sessions(ROOT / "benchmark" / "sessions" / "coding_sessions.jsonl")
    assert len(sessions) >= 20 and len({s["id"] for s in sessions}) == len(sessions)
    for s in sessions:
        assert len(s["turns"]) >= 3 and s["context_files"]
        assert s["user_tokens"] > 4096                   # context passes 4k by the last turn, answers aside
    first = turn_message(sessions[0], 0)
    assert first.startswith("Repository files:") and sessions[0]["context_files"][0]["path"] in first
    third = turn_message(sessions[0], 2)
    assert sessions[0]["turns"][2]["files"][0]["content"][:50] in third


def test_load_sessions_rejects_bad_schema(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text(json.dumps({"id": "a", "turns": [1]}) + "\n")
    with pytest.raises(SystemExit, match="string or"):
        load_sessions(p)
    p.write_text(json.dumps({"turns": ["x"]}) + "\n")
    with pytest.raises(SystemExit, match="'id'"):
        load_sessions(p)


def test_replay_summary_decay_slope():
    rows = [{"config": "d", "turn": t, "ok": True, "completion_tokens": 10, "context_tokens": c, "decode_tok_s": 5.0,
             "accept_length": a} for t, c, a in ((1, 1000, 3.0), (2, 2000, 2.5), (3, 3000, 2.0))]
    s = summarize(rows)["d"]
    assert s["accept_length_slope_per_1k_ctx"] == pytest.approx(-0.5)
    assert s["per_turn"][2]["accept_length"] == 2.5
    assert slope_per_1k([1.0], [1.0]) is None


def test_lookup_match_study_simulates_greedy_lookup_exactly():
    """A quoted span is proposed and accepted block by block; a token that breaks the quote stops the block at
    the first difference; the policy verifies only the slots whose fitted survival clears the threshold."""
    from benchmark.lookup_match_study import fit_rates, policy, simulate

    quote = list(range(100, 140))                                        # 40 tokens in the prompt
    answer = quote[:20] + [999] + quote[21:30]                           # copies 20, one token off, copies on
    samples = simulate([{"turns": [{"prompt_ids": [1, 2] + quote + [3], "answer_ids": answer}]}], gamma=8,
                       max_match=256)
    assert samples and all(si == 0 for si, *_ in samples)
    # the first anchor (quote[0]) recurs only in the prompt: its match is 1 token, below n_min = 2, no block;
    # from quote[1] on the history matches back, blocks of 8 copy the quote until token 20 differs
    accepted = [a for _, _, _, a in samples]
    assert sum(accepted) + len(accepted) <= len(answer) and accepted[0] == 8
    assert any(a < m for _, _, m, a in samples)                          # the block that ran into the 999
    rates = fit_rates(samples, (2, 3, 4, 6, 10, 18), gamma=8)
    tokens_all, rows_all = policy(samples, rates, (2, 3, 4, 6, 10, 18), threshold=0.0)
    tokens_none, rows_none = policy(samples, rates, (2, 3, 4, 6, 10, 18), threshold=1.01)
    assert rows_all == sum(m for _, _, m, _ in samples) and tokens_all == sum(accepted)
    assert (tokens_none, rows_none) == (0, 0)
