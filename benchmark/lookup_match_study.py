"""How well does a prompt-lookup block's match length predict its acceptance? An exact, offline study on
the coding sessions, greedy.

The worker prices a lookup block by the acceptance table of its match-length bucket
(`serving/prompt_lookup.py`: 2, 3, 4-5, 6-9, 10-17, 18+, matches measured back ≤ `MAX_MATCH` tokens). A
request quoting a function it was given matches it back over hundreds of tokens, a coincidence over a
dozen: both land in 18+. This script asks whether measuring further back (and more buckets) separates
them well enough to change what a cost-aware policy verifies.

1. Greedy answers: each session is replayed turn by turn with the target in-process (Hugging Face,
   float32, the chat template the server applies; each answer joins the history as in
   `coding_session_replay.py`). Cached as JSON (`--answers`), so a rerun only simulates.
2. Simulation, per turn: from the first output token on, every step looks up the history (anchor
   included) with `find_continuation`, verifies the whole block against the greedy continuation (exact:
   greedy acceptance is agreement with the target's own next tokens) and advances by accepted + 1; a step
   without a match advances by 1. Each block is one sample (match length, length m, accepted).
3. Per bucketing: conditional acceptance per slot per bucket, and a policy comparison with the tables
   fitted on one half of the sessions and applied to the other (both ways): verify slots while the
   predicted survival a_j ≥ c. Tokens accepted per verified row at equal c, and at equal rows, tell
   whether the finer buckets put the rows where they pay.

    python benchmark/lookup_match_study.py --max-sessions 12 --max-new-tokens 128
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmark.common.sessions import load_sessions, turn_message  # noqa: E402
from dspark_sglang.serving.prompt_lookup import LookupAcceptance, find_continuation, match_bucket  # noqa: E402

DEFAULT_SESSIONS = ROOT / "benchmark" / "sessions" / "coding_sessions.jsonl"
BUCKETINGS = {
    "shipped (≤32: 2,3,4,6,10,18)": (32, (2, 3, 4, 6, 10, 18)),
    "≤256: +32,64,128": (256, (2, 3, 4, 6, 10, 18, 32, 64, 128)),
}
THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def generate_answers(args) -> list[dict]:
    """[{"session", "turns": [{"prompt_ids", "answer_ids"}]}] greedy, float32, chat template applied."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dspark_sglang.models import smollm2_path

    torch.set_num_threads(args.threads)
    path = args.model_path or smollm2_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    out = []
    for s in load_sessions(args.sessions, args.max_sessions):
        messages = [{"role": "system", "content": s["system"]}] if s.get("system") else []
        turns = []
        for i in range(len(s["turns"])):
            messages.append({"role": "user", "content": turn_message(s, i)})
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
            ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
            t0 = time.perf_counter()
            with torch.no_grad():
                gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=args.max_new_tokens, pad_token_id=tok.eos_token_id)
            answer = gen[0, ids.shape[1]:].tolist()
            turns.append({"prompt_ids": ids[0].tolist(), "answer_ids": answer})
            messages.append({"role": "assistant", "content": tok.decode(answer, skip_special_tokens=True)})
            print(f"{s['id']} turn {i + 1}: ctx {ids.shape[1]}, {len(answer)} tokens, "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
        out.append({"session": s["id"], "turns": turns})
    return out


def simulate(answers: list[dict], gamma: int, max_match: int) -> list[tuple[int, int, int, int]]:
    """Blocks (session index, match_len, m, accepted) of full-block greedy verification."""
    samples = []
    for si, s in enumerate(answers):
        for t in s["turns"]:
            hist = np.asarray(t["prompt_ids"] + t["answer_ids"], dtype=np.int64)
            pos = len(t["prompt_ids"])                             # the first output token: the first anchor
            while pos < hist.size - 1:
                block = find_continuation(hist[:pos + 1], gamma, 4, 2, max_match=max_match)
                if block is None:
                    pos += 1
                    continue
                truth = hist[pos + 1:pos + 1 + block.tokens.size]
                agree = block.tokens[:truth.size] == truth
                accepted = int(np.argmin(agree)) if not agree.all() else int(agree.size)
                samples.append((si, block.match_len, int(block.tokens.size), accepted))
                pos += accepted + 1
    return samples


def fit_rates(samples, buckets, gamma: int) -> dict[int, np.ndarray]:
    """bucket → [γ] conditional acceptance p_k: the worker's own estimator (`LookupAcceptance`, its prior),
    without the decay (the study has no opportunities to forget)."""
    table = LookupAcceptance(gamma, buckets=tuple(buckets))
    for _, L, m, a in samples:
        table.record(L, True, verified=m, accepted=a)
    return {b: table.rates(b, True) for b, _, _ in table.accepted}


def policy(samples, rates, buckets, threshold: float) -> tuple[int, int]:
    """(accepted tokens, verified rows) when each block verifies slots while a_j ≥ threshold."""
    tokens = rows = 0
    for _, L, m, a in samples:
        p = rates.get(match_bucket(L, buckets))
        if p is None:
            continue
        surv = np.cumprod(p[:m])
        ell = int((surv >= threshold).sum())                       # surv is non-increasing
        rows += ell
        tokens += min(ell, a)
    return tokens, rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", default=str(DEFAULT_SESSIONS))
    ap.add_argument("--max-sessions", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--gamma", type=int, default=15, help="longest lookup block (the worker's --dspark-lookup-max-len)")
    ap.add_argument("--answers", default=".cache/lookup_study_answers.json",
                    help="greedy answers cache: read if present, else generated and written")
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    cache = Path(args.answers)
    if cache.exists():
        answers = json.loads(cache.read_text())
    else:
        answers = generate_answers(args)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(answers))
    n_out = sum(len(t["answer_ids"]) for s in answers for t in s["turns"])
    print(f"{len(answers)} sessions, {sum(len(s['turns']) for s in answers)} turns, {n_out} output tokens")

    halves = [{i for i in range(len(answers)) if i % 2 == h} for h in (0, 1)]
    for name, (max_match, buckets) in BUCKETINGS.items():
        samples = simulate(answers, args.gamma, max_match)
        print(f"\n== {name}: {len(samples)} lookup blocks, "
              f"{sum(a for *_, a in samples)} tokens accepted when verified whole "
              f"({sum(m for _, _, m, _ in samples)} rows)")
        rates = fit_rates(samples, buckets, args.gamma)
        counts = {}
        for _, L, _, a in samples:
            counts.setdefault(match_bucket(L, buckets), []).append(a)
        for b in sorted(rates):
            p = rates[b]
            print(f"  L≥{b:<4d} n={len(counts[b]):5d}  mean accepted {np.mean(counts[b]):5.2f}  "
                  f"p_k " + " ".join(f"{x:.2f}" for x in p[:8]) + " …")
        print("  policy (tables from the other half of the sessions): c → accepted / rows (tokens per row)")
        for c in THRESHOLDS:
            tok = rows = 0
            for h in (0, 1):
                fit = fit_rates([x for x in samples if x[0] in halves[1 - h]], buckets, args.gamma)
                t, r = policy([x for x in samples if x[0] in halves[h]], fit, buckets, c)
                tok, rows = tok + t, rows + r
            print(f"    c={c:.1f}: {tok:6d} / {rows:6d}  ({tok / max(rows, 1):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
