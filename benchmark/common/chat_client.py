"""One streamed OpenAI chat completion against a local SGLang server, with the timings benchmarks need.

Per request: TTFT (first content chunk), decode tokens/s per user = tokens after the first /
(end − first chunk), completion and prompt tokens (from the final usage chunk), and the accepted
length SGLang reports per request (`return_spec_tokens_details` → sglext.spec_tokens_details:
completion tokens / verify steps; absent without speculation).
"""
from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import asdict, dataclass


@dataclass
class RequestResult:
    ok: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float = 0.0
    decode_s: float = 0.0
    end_to_end_s: float = 0.0
    accept_length: float | None = None
    """Committed tokens per target verify step of this request (None without speculation)."""
    verify_steps: int | None = None
    text: str = ""
    error: str = ""
    start_s: float = 0.0
    """perf_counter() at send time (for aggregate windows)."""

    @property
    def decode_tok_s(self) -> float:
        """Per-user decode speed excluding TTFT (the first token arrives with TTFT)."""
        n = self.completion_tokens - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0

    def as_row(self) -> dict:
        row = asdict(self)
        row["decode_tok_s"] = self.decode_tok_s
        return row


def stream_chat(base: str, messages: list[dict], max_tokens: int, *, temperature: float = 0.0,
                timeout_s: float = 600.0, ignore_eos: bool = True, top_p: float = 1.0) -> RequestResult:
    """Send one streamed chat completion; never raises for server-side errors (ok=False instead).

    ignore_eos=True makes every request produce exactly `max_tokens` (fixed output length); top_p < 1 is
    sent as the request's nucleus (otherwise the server's default applies).
    """
    body = {"model": "default", "messages": messages, "max_tokens": max_tokens, "temperature": temperature,
            "stream": True, "stream_options": {"include_usage": True}, "return_spec_tokens_details": True,
            "ignore_eos": ignore_eos}
    if top_p < 1.0:
        body["top_p"] = top_p
    req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    first = None
    res = RequestResult(ok=False, start_s=start)
    pieces = []
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                    continue
                event = json.loads(line[5:])
                if event.get("usage"):
                    res.prompt_tokens = event["usage"].get("prompt_tokens", 0)
                    res.completion_tokens = event["usage"].get("completion_tokens", 0)
                details = (event.get("sglext") or {}).get("spec_tokens_details")
                if details:
                    d = details[0] if isinstance(details, list) else details
                    if d.get("spec_verify_ct"):
                        res.accept_length = d.get("spec_accept_length")
                        res.verify_steps = d.get("spec_verify_ct")
                for choice in event.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        if first is None:
                            first = time.perf_counter()
                        pieces.append(content)
        res.ok = True
    except Exception as exc:                                   # noqa: BLE001 - recorded, not raised
        res.error = f"{type(exc).__name__}: {exc}"
    end = time.perf_counter()
    first = first or end
    res.ttft_s, res.decode_s, res.end_to_end_s = first - start, end - first, end - start
    res.text = "".join(pieces)
    if res.ok and res.accept_length is None and res.verify_steps:
        res.accept_length = res.completion_tokens / res.verify_steps
    return res
