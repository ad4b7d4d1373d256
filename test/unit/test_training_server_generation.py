"""Answer generation through an SGLang-style `/generate` endpoint (a local fake server here): request body,
EOS handling, resumability, and the template chat prompts."""
from __future__ import annotations

import http.server
import json
import threading

from dspark_sglang.training.data import GenerationConfig, read_shard
from dspark_sglang.training.prompts import Prompt, chat_prompts
from dspark_sglang.training.server_generation import generate_answers_via_server

EOS = 2


class _Tok:
    """Chat template = the text's bytes; enough for the shard format."""

    def apply_chat_template(self, msgs, tokenize, add_generation_prompt):
        return msgs[0]["content"]

    def __call__(self, text, add_special_tokens):
        return {"input_ids": [10 + (b % 50) for b in text.encode()]}


class _Generate(http.server.BaseHTTPRequestHandler):
    bodies: list = []

    def do_POST(self):                                               # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Generate.bodies.append(body)
        n = len(body["input_ids"])
        # odd prompt length: stops at EOS (output_ids without it, as SGLang reports); even: hits the length limit
        out = {"output_ids": [7, 8, 9], "meta_info": {"finish_reason": {"type": "stop", "matched": EOS}}} if n % 2 \
            else {"output_ids": [5] * body["sampling_params"]["max_new_tokens"],
                  "meta_info": {"finish_reason": {"type": "length", "length": 4}}}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


def test_generate_via_server_shard_and_resume(tmp_path):
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Generate)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_port}"
    prompts = [Prompt("a", "s", "x"), Prompt("b", "s", "xy"), Prompt("c", "s", "xyz")]
    cfg = GenerationConfig(max_new_tokens=4)
    shard = tmp_path / "answers.jsonl"
    try:
        recs = generate_answers_via_server(base, _Tok(), prompts[:2], shard, cfg, (EOS,), concurrency=2, progress=False)
        assert {r["uid"] for r in recs} == {"a", "b"}
        by = {r["uid"]: r for r in read_shard(shard)}
        assert by["a"]["answer_ids"] == [7, 8, 9, EOS]           # stopped by EOS: EOS kept as the last id
        assert by["b"]["answer_ids"] == [5, 5, 5, 5]             # length limit: no EOS
        sp = _Generate.bodies[0]["sampling_params"]
        assert (sp["temperature"], sp["top_p"], sp["top_k"], sp["max_new_tokens"]) == (0.7, 0.8, 20, 4)
        _Generate.bodies.clear()
        recs = generate_answers_via_server(base, _Tok(), prompts, shard, cfg, (EOS,), progress=False)
        assert len(_Generate.bodies) == 1 and len(recs) == 3     # resumed: only "c" was requested
    finally:
        srv.shutdown()


def test_chat_prompts_are_distinct_and_deterministic():
    a, b = chat_prompts(50, seed=0), chat_prompts(50, seed=0)
    assert [p.uid for p in a] == [p.uid for p in b] and len({p.uid for p in a}) == 50
    assert all(p.source == "chat" and "{t}" not in p.text for p in a)


def _train_drafter_cli():
    """python/train_drafter.py as a module (it is a script, not part of the package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("train_drafter", Path(__file__).parents[2] / "python" / "train_drafter.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def test_chat_prompts_fill_the_v2_preset_and_cli_overrides_reach_it():
    from dspark_sglang.training.pipeline import resolve_preset
    from dspark_sglang.training.presets import PRESETS
    v2 = PRESETS["smollm2-v2"]
    assert len({p.uid for p in chat_prompts(v2.num_chat)}) == v2.num_chat      # enough task x topic pairs
    args = _train_drafter_cli().parse_args(["generate", "--preset", "smollm2-v2", "--num-chat", "7", "--ablation", "dflash"])
    preset = resolve_preset(args)
    assert preset.num_chat == 7 and preset.num_code == v2.num_code and preset.drafter["markov_rank"] == 0


def test_markov_head_flags_reach_the_train_config():
    from dspark_sglang.training.pipeline import resolve_preset
    from dspark_sglang.training.presets import PRESETS
    from dspark_sglang.training.trainer import TrainConfig
    v2 = PRESETS["smollm2-v2"]
    cli = _train_drafter_cli()
    preset = resolve_preset(cli.parse_args(["train", "--preset", "smollm2-v2", "--markov-rank", "128", "--confidence-detached",
                                            "--markov-rows", "draft_vocab", "--draft-vocab-size", "10603"]))
    assert preset.drafter["markov_rank"] == 128 and preset.confidence_detached and preset.markov_rows == "draft_vocab"
    assert v2.drafter["markov_rank"] == 32 and not v2.confidence_detached            # the preset itself untouched
    train_config = TrainConfig.from_preset(preset)
    assert train_config.confidence_detached and train_config.markov_rows == "draft_vocab"
    assert preset.draft_vocab_size == train_config.draft_vocab_size == 10603 and v2.draft_vocab_size is None
    plain = resolve_preset(cli.parse_args(["train", "--preset", "smollm2-v2"]))      # absent flags keep the preset's
    assert plain.drafter["markov_rank"] == 32 and not plain.confidence_detached and plain.markov_rows == "full"
