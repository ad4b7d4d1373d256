"""DSpark served by stock `python -m sglang.launch_server --speculative-algorithm DSPARK` (dspark_sglang
plugin worker) on SmolLM2-135M, fp32, CPU: greedy outputs equal a no-speculation server token for token.

Servers (about 1-2 min each to start on a 2-core host; one per module, shared by the tests):
no speculation, and DSPARK with the bigram test drafter (test_dspark_drafters.py: long accepted runs on
repetitive text, rejections elsewhere), default policy alg1, --enable-metrics. A third, short-lived
launch checks that a malformed drafter path stops the launcher with a clear message.

Needs the plugin's entry point (pip install -e . of this package, or a dist-info on PYTHONPATH) and the
CPU-host bootstrap. Slow variants (DSPARK_RUN_SLOW=1): 24 prompts, and the other policies.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib.metadata import entry_points

import pytest

pytest.importorskip("sglang")

from test.conftest_sglang import http_json, http_stream, launch_server, smollm2_hf_dir  # noqa: E402,F401
from test.integration.test_dspark_drafters import build_bigram_drafter, build_dflash_drafter  # noqa: E402

pytestmark = pytest.mark.sglang

PROMPTS = [
    "1, 1, 1, 1, 1, 1, 1, 1,",
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "ha ha ha ha ha ha ha ha",
    "List the days of the week: Monday, Tuesday,",
    "Write a haiku about the sea.",
]
SLOW_PROMPTS = PROMPTS + [
    "Count to twenty: 1 2 3 4 5",
    "The quick brown fox",
    "Explain what a hash table is in one sentence.",
    "import numpy as np\n\ndef softmax(x):\n",
    "Translate to French: Good morning, how are you?",
    "Q: What is 12 times 12?\nA:",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "1, 2, 3, 4, 5, 6, 7,",
    "<html>\n<head>\n<title>",
    "SELECT name FROM users WHERE",
    "Roses are red, violets are blue,",
    "The largest planet in the solar system is",
    "for i in range(10):\n    print(",
    "A, B, C, D, E, F,",
    "Dear Sir or Madam,\n\nI am writing to",
    "The boiling point of water is",
    "ha ha ha ha 1, 1, 1,",
]
MAX_NEW = 24
COMMON = ["--dtype", "float32", "--random-seed", "0"]
CHAT = {"model": "default", "temperature": 0, "max_tokens": 24,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]}


def _plugin_installed() -> bool:
    return any(ep.value.startswith("dspark_sglang.serving.plugin") for ep in entry_points(group="sglang.srt.plugins"))


@pytest.fixture(scope="module", autouse=True)
def _needs_plugin():
    if not _plugin_installed():
        pytest.skip("dspark_sglang's sglang.srt.plugins entry point is not installed (pip install --no-build-isolation -e .)")


def _generate(base_url: str, prompt: str, max_new: int = MAX_NEW, **sampling) -> dict:
    params = {"temperature": 0, "max_new_tokens": max_new, **sampling}
    return http_json(base_url + "/generate", {"text": prompt, "sampling_params": params})


def _ids(out: dict) -> list[int]:
    return out["output_ids"] if "output_ids" in out else out["meta_info"]["output_ids"]


def _collect(base_url: str, prompts: list[str]) -> dict:
    outs = {p: _generate(base_url, p) for p in prompts}
    chat = http_json(base_url + "/v1/chat/completions", CHAT)["choices"][0]["message"]["content"]
    return {"outs": outs, "chat": chat}


def _used_tokens(base_url: str) -> int:
    loads = http_json(base_url + "/v1/loads")
    entries = loads.get("loads", loads) if isinstance(loads, dict) else loads
    entries = entries if isinstance(entries, list) else [entries]
    return sum(int(e.get("num_used_tokens", 0)) for e in entries)


@pytest.fixture(scope="module")
def drafter_dir(smollm2_hf_dir, tmp_path_factory):
    return build_bigram_drafter(str(tmp_path_factory.mktemp("drafter") / "bigram"), str(smollm2_hf_dir))


@pytest.fixture(scope="module")
def reference(smollm2_hf_dir, tmp_path_factory, request):
    """Greedy outputs of a no-speculation server (the same server settings otherwise)."""
    prompts = SLOW_PROMPTS if os.environ.get("DSPARK_RUN_SLOW") == "1" else PROMPTS
    log = tmp_path_factory.mktemp("server") / "no_spec.log"
    with launch_server(smollm2_hf_dir, COMMON + ["--disable-radix-cache"], log) as server:
        return _collect(server.base_url, prompts)


@pytest.fixture(scope="module")
def sps_table(tmp_path_factory):
    """A fixed, nearly flat SPS table (CPU verify cost barely grows with B): tests must not depend on a
    start-up profile taken on a loaded shared host."""
    path = tmp_path_factory.mktemp("sps") / "sps.json"
    path.write_text(json.dumps({"batch_rows": [1, 8, 64], "step_seconds": [0.050, 0.055, 0.100]}))
    return str(path)


@pytest.fixture(scope="module")
def dspark_server(smollm2_hf_dir, drafter_dir, sps_table, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "dspark.log"
    # prompt-lookup blocks off: this server tests the drafter's path, and its rounds log accounts for every
    # step (test_prompt_lookup_blocks_match_no_speculation serves the same prompts with lookups on)
    args = COMMON + ["--speculative-algorithm", "DSPARK", "--speculative-draft-model-path", drafter_dir,
                     "--dspark-sps-table", sps_table, "--enable-metrics", "--dspark-log-interval", "10",
                     "--dspark-rounds-log", str(log.with_name("rounds.jsonl")), "--dspark-prompt-lookup", "off"]
    with launch_server(smollm2_hf_dir, args, log) as server:
        server.rounds_log = log.with_name("rounds.jsonl")
        yield server


def test_greedy_matches_no_speculation(dspark_server, reference):
    """Token-for-token equality over the prompts; the repetitive ones must accept drafts (τ > 1)."""
    for prompt, ref in reference["outs"].items():
        out = _generate(dspark_server.base_url, prompt)
        assert _ids(out) == _ids(ref), f"prompt {prompt!r}:\nDSPARK {out['text']!r}\nno-spec {ref['text']!r}"
    out = _generate(dspark_server.base_url, PROMPTS[0])
    meta = out["meta_info"]
    assert meta["spec_verify_ct"] < meta["completion_tokens"], f"no draft was ever accepted: {meta}"


def test_streaming_chat_matches(dspark_server, reference):
    events = http_stream(dspark_server.base_url + "/v1/chat/completions", {**CHAT, "stream": True})
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
    assert len(events) > 2
    assert text == reference["chat"]


def test_concurrent_clients_match(dspark_server, reference):
    """8 clients at once (continuous batching, requests joining and leaving mid-run)."""
    prompts = list(reference["outs"])
    jobs = [(prompts[i % len(prompts)], MAX_NEW - 4 * (i % 3)) for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda job: _generate(dspark_server.base_url, job[0], job[1]), jobs))
    for (prompt, max_new), out in zip(jobs, outs):
        assert _ids(out) == _ids(reference["outs"][prompt])[:max_new], f"prompt {prompt!r} under concurrency"


def test_sampled_requests_and_abort(dspark_server):
    """Temperature / top-k / top-p requests run (lossless rejection sampling); an aborted stream frees its slots."""
    out = _generate(dspark_server.base_url, PROMPTS[1], temperature=0.8, top_k=20, top_p=0.9)
    assert out["meta_info"]["completion_tokens"] > 0
    req = urllib.request.Request(dspark_server.base_url + "/generate", data=json.dumps({
        "text": PROMPTS[0], "stream": True, "sampling_params": {"temperature": 0, "max_new_tokens": 400}}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        resp.readline()   # first chunk, then hang up mid-generation
    assert _generate(dspark_server.base_url, PROMPTS[1], max_new=4)["meta_info"]["completion_tokens"] == 4


def test_invalid_request_is_4xx_and_server_keeps_serving(dspark_server):
    with pytest.raises(urllib.error.HTTPError) as err:
        http_json(dspark_server.base_url + "/generate",
                  {"text": "hi", "sampling_params": {"temperature": -1.0, "max_new_tokens": 4}})
    assert 400 <= err.value.code < 500
    assert _generate(dspark_server.base_url, PROMPTS[1], max_new=4)["meta_info"]["completion_tokens"] == 4


def test_metrics_exposed(dspark_server):
    _generate(dspark_server.base_url, PROMPTS[0])
    with urllib.request.urlopen(dspark_server.base_url + "/metrics", timeout=30) as resp:
        body = resp.read().decode()
    for name in ("dspark:mean_accept_length", "dspark:mean_verify_budget", "dspark:predicted_step_seconds",
                 "dspark:measured_step_seconds", "dspark:survival_calibration_error", "dspark:drafted_step_fraction",
                 "dspark:prompt_lookup_blocks_total", "dspark:shared_lookup_blocks_total"):
        assert name in body, f"{name} missing from /metrics"
    accept = float(re.search(r"^dspark:mean_accept_length\S* (\S+)$", body, re.M).group(1))
    assert accept >= 1.0
    log = dspark_server.log_path.read_text()
    assert "dspark τ" in log
    # the online calibration (on by default) refitted on the verify outcomes of the tests above; it is logged
    fits = re.findall(r"online T: ([0-9./]+) b: ([-+0-9./]+)", log)
    assert fits and len(fits[-1][0].split("/")) == 4 and len(fits[-1][1].split("/")) == 4, \
        "no online calibration in the DSpark log line"


def test_throughput_at_slo_script_against_server(dspark_server, tmp_path):
    """benchmark/throughput_at_slo.py attached to the server: levels, verify budget from the dspark:* counters,
    per-request accepted length, JSON/CSV/PNG outputs."""
    from benchmark.throughput_at_slo import main as slo_main
    out = tmp_path / "slo"
    dataset = tmp_path / "prompts.jsonl"           # the test's own prompts: no dependency on ../shared
    dataset.write_text("".join(json.dumps({"turns": [t]}) + "\n"
                               for t in ("Write a haiku about rivers.", "Name three prime numbers.")))
    slo_main(["--attach", f"dspark-alg1={dspark_server.base_url}", "--configs", "dspark-alg1", "--concurrency", "1,2",
              "--requests-per-level", "2", "--output-len", "12", "--num-prompts", "2", "--slo", "1",
              "--dataset", str(dataset), "--level-time-limit-s", "300", "--out-dir", str(out)])
    result = json.loads((out / "throughput_at_slo.json").read_text())
    levels = result["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 2] and all(lv["failed"] == 0 for lv in levels)
    assert all(lv["output_tokens"] == 2 * 12 for lv in levels)                # fixed output length (ignore_eos)
    assert all(lv["verify_budget_mean"] is not None and 0 <= lv["verify_budget_mean"] <= 7 for lv in levels)
    assert all(r["accept_length"] and r["accept_length"] >= 1.0 for r in result["requests"])
    assert result["slo_table"][0]["config"] == "dspark-alg1"
    for name in ("throughput_at_slo.csv", "frontier.png", "verify_budget.png"):
        assert (out / name).stat().st_size > 0


def test_coding_session_replay_script_against_server(dspark_server, tmp_path):
    """benchmark/coding_session_replay.py on a two-turn session: the model's answer is kept in the history,
    so the second turn's context is longer than the first's by at least that answer."""
    from benchmark.coding_session_replay import main as replay_main
    sessions = tmp_path / "s.jsonl"
    sessions.write_text(json.dumps({"id": "t", "system": "Be brief.",
                                    "context_files": [{"path": "a.py", "content": "def f(x):\n    return x + 1\n"}],
                                    "turns": ["Write g(x) that calls f twice.", "Now add a docstring."]}) + "\n")
    out = tmp_path / "replay"
    replay_main(["--attach", f"dspark-alg1={dspark_server.base_url}", "--configs", "dspark-alg1", "--sessions",
                 str(sessions), "--max-new-tokens", "12", "--out-dir", str(out)])
    turns = json.loads((out / "coding_session_replay.json").read_text())["turns"]
    assert [t["turn"] for t in turns] == [1, 2] and all(t["ok"] for t in turns)
    assert turns[1]["context_tokens"] >= turns[0]["context_tokens"] + turns[0]["completion_tokens"]
    assert all(t["accept_length"] >= 1.0 for t in turns)
    assert (out / "replay.png").stat().st_size > 0
    # --interleave: each session on every configuration before the next, the order rotating per session
    two = tmp_path / "two.jsonl"
    line = json.loads(sessions.read_text())
    two.write_text("".join(json.dumps(dict(line, id=i, turns=line["turns"][:1])) + "\n" for i in ("s1", "s2")))
    replay_main(["--attach", f"dspark-alg1={dspark_server.base_url}", "--attach", f"dspark-static={dspark_server.base_url}",
                 "--configs", "dspark-alg1,dspark-static", "--sessions", str(two), "--max-new-tokens", "4",
                 "--out-dir", str(out), "--interleave"])
    turns = json.loads((out / "coding_session_replay.json").read_text())["turns"]
    assert [(t["session"], t["config"]) for t in turns] == [("s1", "dspark-alg1"), ("s1", "dspark-static"),
                                                           ("s2", "dspark-static"), ("s2", "dspark-alg1")]


def test_rounds_log_records_every_request_round(dspark_server):
    from dspark_sglang.serving.rounds_log import count_lines, read_rounds

    before = count_lines(str(dspark_server.rounds_log))
    # 40 tokens: at least 17 verify steps even if the draft gate chose plain steps throughout, and it
    # drafts at least one step in every 17 (explore_every = 16), so at least one round is logged
    out = _generate(dspark_server.base_url, PROMPTS[0], max_new=40, ignore_eos=True)
    rounds = read_rounds(str(dspark_server.rounds_log), start=before)
    # one request: every drafted step logs a round that commits (accepted + 1) tokens; a plain step (the
    # draft gate skipped the drafter) logs nothing and commits 1. Together: all but the prefill's token.
    meta = out["meta_info"]
    assert rounds.accepted.size >= 1 and rounds.conf is not None and rounds.conf.shape == (rounds.accepted.size, 4)
    assert (rounds.accepted <= rounds.verified).all() and (rounds.temperature == 0).all()
    plain_steps = meta["spec_verify_ct"] - rounds.accepted.size
    assert plain_steps >= 0, f"{rounds.accepted.size} rounds logged for {meta['spec_verify_ct']} verify steps"
    assert int((rounds.accepted + 1).sum()) + plain_steps >= meta["completion_tokens"] - 1


def test_token_usage_returns_to_zero_when_idle(dspark_server):
    """Run last among the server tests: after everything above (incl. the abort), no KV slot stays held.
    The radix cache keeps finished prompts; flush it so only leaked slots would remain."""
    deadline = time.monotonic() + 60
    while True:
        try:      # 400 while the scheduler still retires a just-finished request: try again
            urllib.request.urlopen(urllib.request.Request(dspark_server.base_url + "/flush_cache", method="POST"),
                                   timeout=30).read()
        except urllib.error.HTTPError as err:
            if err.code != 400 or time.monotonic() > deadline:
                raise
        used = _used_tokens(dspark_server.base_url)
        if used == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert used == 0, f"{used} KV tokens still held when idle"


def test_malformed_drafter_path_fails_at_startup(smollm2_hf_dir, tmp_path):
    bad = tmp_path / "not_a_drafter"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architectures": ["Qwen3DSparkModel"], "block_size": 4}))
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(smollm2_hf_dir), "--device", "cpu",
           "--port", "1", "--host", "127.0.0.1", "--speculative-algorithm", "DSPARK",
           "--speculative-draft-model-path", str(bad)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f"DSpark: invalid drafter checkpoint {str(bad)!r}" in proc.stderr + proc.stdout


def test_rank0_dflash_drafter_served_with_static_policy(smollm2_hf_dir, sps_table, reference, tmp_path):
    """A markov_rank-0 drafter (the DFlash ablation) passes SGLang's DSPARK capture setup through our hook
    and is served losslessly with --dspark-policy static."""
    drafter = build_dflash_drafter(str(tmp_path / "dflash"), str(smollm2_hf_dir))
    args = COMMON + ["--speculative-algorithm", "DSPARK", "--speculative-draft-model-path", drafter,
                     "--dspark-sps-table", sps_table, "--dspark-policy", "static"]
    with launch_server(smollm2_hf_dir, args, tmp_path / "dflash.log") as server:
        for prompt in PROMPTS[:3]:
            assert _ids(_generate(server.base_url, prompt)) == _ids(reference["outs"][prompt]), prompt


def test_plain_steps_match_no_speculation(smollm2_hf_dir, drafter_dir, sps_table, reference, tmp_path):
    """--dspark-max-verify 0: every step is a plain step (no drafter, one row per request, the path
    the draft gate takes when drafting does not pay) and still decodes exactly like no speculation;
    sampled requests go through the target's own distribution."""
    args = COMMON + ["--speculative-algorithm", "DSPARK", "--speculative-draft-model-path", drafter_dir,
                     "--dspark-sps-table", sps_table, "--dspark-max-verify", "0", "--dspark-log-interval", "5"]
    with launch_server(smollm2_hf_dir, args, tmp_path / "plain.log") as server:
        for prompt in PROMPTS[:3]:
            assert _ids(_generate(server.base_url, prompt)) == _ids(reference["outs"][prompt]), prompt
        out = _generate(server.base_url, PROMPTS[1], temperature=0.8, top_k=20, top_p=0.9)
        assert out["meta_info"]["completion_tokens"] == MAX_NEW
    log = (tmp_path / "plain.log").read_text()
    assert "drafted: 0.00" in log and "budget/req: 0.00" in log


def test_prompt_lookup_blocks_match_no_speculation(smollm2_hf_dir, sps_table, reference, tmp_path):
    """A drafter that is never confident (no bigrams: c ≈ 0.05) loses every request with a recurring
    suffix to its prompt-lookup block, on drafted steps and on the lookup-only steps the draft gate turns
    plain steps into: the repetitive prompts are decoded mostly from lookup blocks — up to 15 tokens in a
    verify window wider than the drafter's γ = 4, and, for the prompts served a second time, copied from
    the first answer (the shared corpus) — greedy still equal to no speculation, and accepted (τ > 1)."""
    drafter = build_bigram_drafter(str(tmp_path / "unsure"), str(smollm2_hf_dir), bigrams={})
    args = COMMON + ["--speculative-algorithm", "DSPARK", "--speculative-draft-model-path", drafter,
                     "--dspark-sps-table", sps_table, "--dspark-log-interval", "5"]
    with launch_server(smollm2_hf_dir, args, tmp_path / "lookup.log") as server:
        for prompt, ref in reference["outs"].items():
            assert _ids(_generate(server.base_url, prompt)) == _ids(ref), f"prompt {prompt!r} with lookup blocks"
        prompts = list(reference["outs"])                     # 8 clients at once: requests join and leave
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda i: _generate(server.base_url, prompts[i % len(prompts)]), range(8)))
        for i, out in enumerate(outs):
            assert _ids(out) == _ids(reference["outs"][prompts[i % len(prompts)]]), f"client {i} with lookup blocks"
        out = _generate(server.base_url, PROMPTS[3], temperature=0.8, top_k=20, top_p=0.9)
        assert out["meta_info"]["completion_tokens"] == MAX_NEW
    log = (tmp_path / "lookup.log").read_text()
    assert "γ=4, verify window 16" in log       # lookup blocks of up to 15 tokens past the drafter's 4
    last = re.findall(r"dspark τ: ([0-9.]+).*lookup blocks: ([0-9.]+)", log)
    assert last, "no lookup block was ever verified"
    tau, share = map(float, last[-1])
    assert share > 0.1 and tau > 1.0, f"lookup blocks {share} of request-steps, τ {tau}"
    shared = [float(x) for x in re.findall(r"\(shared ([0-9.]+)\)", log)]
    assert shared and shared[-1] > 0, "the repeated prompts never verified a block from an earlier answer"


def test_rank0_drafter_refuses_a_scheduling_policy(smollm2_hf_dir, tmp_path):
    """Without a confidence head there are no survivals: alg1 (the default) is refused at start-up, by name."""
    drafter = build_dflash_drafter(str(tmp_path / "dflash"), str(smollm2_hf_dir))
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(smollm2_hf_dir), "--device", "cpu",
           "--port", "1", "--host", "127.0.0.1", "--speculative-algorithm", "DSPARK",
           "--speculative-draft-model-path", drafter]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "has no confidence head" in proc.stderr + proc.stdout and "--dspark-policy static" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["static", "threshold", "lagged-topk"])
def test_other_policies_match(policy, smollm2_hf_dir, drafter_dir, sps_table, reference, tmp_path):
    args = COMMON + ["--speculative-algorithm", "DSPARK", "--speculative-draft-model-path", drafter_dir,
                     "--dspark-sps-table", sps_table, "--dspark-policy", policy]
    with launch_server(smollm2_hf_dir, args, tmp_path / f"{policy}.log") as server:
        for prompt, ref in reference["outs"].items():
            assert _ids(_generate(server.base_url, prompt)) == _ids(ref), f"{policy}: prompt {prompt!r}"


def test_auto_profile_measures_context_cost_and_stays_lossless(smollm2_hf_dir, drafter_dir, reference, tmp_path):
    """--dspark-sps-table auto (the default): the start-up profile also measures the context cost (dummy
    requests reading long contexts through request-pool rows it restores afterwards) and caches it with the
    points; the server prices its steps with it and its greedy outputs still equal plain decoding."""
    env = {"DSPARK_CACHE_DIR": str(tmp_path / "cache")}
    args = COMMON + ["--speculative-algorithm", "DSPARK", "--speculative-draft-model-path", drafter_dir]
    with launch_server(smollm2_hf_dir, args, tmp_path / "auto.log", env=env) as server:
        for prompt, ref in reference["outs"].items():
            assert _ids(_generate(server.base_url, prompt)) == _ids(ref), f"prompt {prompt!r}"
    (cached,) = (tmp_path / "cache" / "sps").glob("*.json")
    cost = json.loads(cached.read_text())["context_cost"]
    assert cost["base_context"] == 64 and cost["width"] >= 2
    # fp32 K/V of 4 requests × ~2k tokens: tens of ms more per forward than at 64 tokens, and a full window's
    # scores against every key cost more per token than one row's (~3× on the dev host)
    assert 0 < cost["per_token_one_row"] < cost["per_token_full"]
    assert re.search(r"context cost \d+ ns/token at 1 row", (tmp_path / "auto.log").read_text())


@pytest.mark.slow
def test_sps_profile_cached_and_reused(smollm2_hf_dir, drafter_dir, tmp_path):
    """--dspark-sps-table auto: the first start profiles (bounded) and caches; the second checks and reuses
    the cache; a cache 4x slower than the start-up check (profiled on a busy host) is measured again."""
    env = {"DSPARK_CACHE_DIR": str(tmp_path / "cache")}
    args = COMMON + ["--speculative-algorithm", "DSPARK", "--speculative-draft-model-path", drafter_dir]
    for i, expected in enumerate(["profiled in", "(cache ", "re-profiled in"]):
        if i == 2:   # a profile taken while something else loaded the host: 4x the real step times
            (cached,) = (tmp_path / "cache" / "sps").glob("*.json")
            points = json.loads(cached.read_text())
            stale = dict(points, step_seconds=[4 * t for t in points["step_seconds"]])
            cached.write_text(json.dumps(stale))
        with launch_server(smollm2_hf_dir, args, tmp_path / f"start{i}.log", env=env) as server:
            assert _generate(server.base_url, PROMPTS[0], max_new=4)["meta_info"]["completion_tokens"] == 4
        log = (tmp_path / f"start{i}.log").read_text()
        assert "DSpark SPS(B)" in log and expected in log, f"start {i}: no '{expected}' SPS line"
    assert "measured on a busier host" in log
    rewritten = json.loads(cached.read_text())["step_seconds"]
    assert rewritten[0] < stale["step_seconds"][0] / 2, "the stale cache was not replaced by the new profile"
