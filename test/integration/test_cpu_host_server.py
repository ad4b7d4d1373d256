"""Stock `python -m sglang.launch_server` on a host without a usable CUDA driver, with nothing but
dspark-sglang installed: its .pth bootstrap (dspark_sglang/serving/cpu_host) makes sgl_kernel import,
turns on SGLang's CPU engine and supplies the sgl_kernel CPU ops.

Runs two servers (about 1 min each on 2 cores): no speculation, then NGRAM, both fp32 so that greedy
outputs are comparable token for token (bf16 decode vs verify kernels differ on near-ties).
"""
from __future__ import annotations

import glob
import os
import site

import pytest

pytest.importorskip("sglang")

from dspark_sglang.serving.cpu_host import bootstrap  # noqa: E402
from test.conftest_sglang import http_json, http_stream, launch_server, smollm2_hf_dir  # noqa: E402,F401

pytestmark = pytest.mark.sglang

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "List the days of the week: Monday, Tuesday,",
]
MAX_NEW = 40
COMMON = ["--dtype", "float32"]


def _pth_installed() -> bool:
    dirs = site.getsitepackages() + [site.getusersitepackages()]
    return any(glob.glob(os.path.join(d, "dspark_sglang_cpu_host.pth")) for d in dirs)


@pytest.fixture(scope="module", autouse=True)
def _cpu_host_only():
    if bootstrap.cuda_driver_usable():
        pytest.skip("a CUDA driver is usable here: the CPU-host bootstrap stays off")
    if not _pth_installed():
        pytest.skip("dspark_sglang_cpu_host.pth is not in site-packages: "
                    "pip install --no-build-isolation -e . (or install the wheel)")
    if os.environ.get("DSPARK_CPU_HOST", "auto") == "0":
        pytest.skip("DSPARK_CPU_HOST=0 turns the bootstrap off")


def _generate(base_url: str, prompt: str) -> dict:
    return http_json(base_url + "/generate", {
        "text": prompt, "sampling_params": {"temperature": 0, "max_new_tokens": MAX_NEW}})


@pytest.fixture(scope="module")
def no_spec_outputs(smollm2_hf_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "no_spec.log"
    with launch_server(smollm2_hf_dir, COMMON, log) as server:
        texts = [_generate(server.base_url, p)["text"] for p in PROMPTS]
        chat = {"model": "default", "temperature": 0, "max_tokens": 32,
                "messages": [{"role": "user", "content": "What is the capital of France?"}]}
        reply = http_json(server.base_url + "/v1/chat/completions", chat)
        events = http_stream(server.base_url + "/v1/chat/completions", {**chat, "stream": True})
        log_text = log.read_text(errors="replace")
    return {"texts": texts, "chat": reply, "events": events, "log": log_text}


def test_no_spec_generate_is_sane(no_spec_outputs):
    texts = no_spec_outputs["texts"]
    assert all(t.strip() for t in texts), texts
    assert "Paris" in texts[0], texts[0]
    assert "Wednesday" in texts[2], texts[2]
    # The CPU-host bootstrap, not a fallback, served it: intel_amx attention is kept.
    assert "fallback to torch_native" not in no_spec_outputs["log"]


def test_chat_completions_and_streaming(no_spec_outputs):
    content = no_spec_outputs["chat"]["choices"][0]["message"]["content"]
    assert "Paris" in content, content
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in no_spec_outputs["events"]
                       if e.get("choices"))
    assert len(no_spec_outputs["events"]) > 3          # really streamed, not one chunk
    assert streamed == content


def test_ngram_matches_no_spec_greedy(no_spec_outputs, smollm2_hf_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "ngram.log"
    args = COMMON + ["--speculative-algorithm", "NGRAM", "--speculative-num-draft-tokens", "8"]
    with launch_server(smollm2_hf_dir, args, log) as server:
        texts = [_generate(server.base_url, p)["text"] for p in PROMPTS]
    assert texts == no_spec_outputs["texts"]
