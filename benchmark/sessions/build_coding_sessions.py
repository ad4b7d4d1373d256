"""Build the multi-turn coding sessions that `benchmark/coding_session_replay.py` replays.

Schema (one JSON object per line of coding_sessions.jsonl):
    {"id": "humaneval-3",                        # unique name
     "system": "You are ...",                    # optional system prompt
     "context_files": [{"path": "textwrap.py", "content": "..."}],   # repository context, sent with turn 1
     "turns": ["task ...",                       # user turns in order; a turn is a string or
               {"text": "this fails with ...", "files": [{"path": ..., "content": ...}]}]}  # files pasted then
The replay keeps the model's own answers in the history, so context grows turn by turn.

Tasks are the first turns of humaneval / mbpp (../shared/datasets); repository context is real source
from this Python's standard library (whole top-level functions of a few modules). Follow-ups ask for
tests, a fix for a reported failure (pasting one more module the tests use) and a refactor. Every
session's user text alone (system + files + turns) is sized to 4,200–6,000 target tokens, so the
context passes 4k tokens by the last turn whatever the model answers, and stays inside SmolLM2's 8k.

    python benchmark/sessions/build_coding_sessions.py   # rewrites coding_sessions.jsonl (deterministic)
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from dspark_sglang.training.repository_prompts import files_block, module_excerpt, stdlib_dir  # noqa: E402
from dspark_sglang.evaluation.datasets import load_first_turns  # noqa: E402

SYSTEM = ("You are a careful senior Python engineer. Answer with code in fenced blocks and short explanations. "
          "Reuse helpers from the repository when they fit.")
FOLLOW_UPS = (
    "Add unit tests for your solution with the unittest module. Cover the edge cases (empty input, a single "
    "element, large values) and show the complete test file.",
    "Running the tests fails:\n\n```\nTraceback (most recent call last):\n  File \"test_solution.py\", line 14, in "
    "test_edge_cases\n    self.assertEqual(solution(data), expected)\nAssertionError: None != []\n```\n\n"
    "The tests also import helpers from `{path}`, pasted below. Find the cause and fix it.",
    "Refactor the final version for readability: type hints, a docstring, no duplicated logic. Then explain the "
    "time and space complexity in two sentences.",
)
MIN_TOKENS, MAX_TOKENS = 4200, 6000


def user_tokens(tok, session: dict) -> int:
    texts = [session.get("system", ""), files_block(session["context_files"])]
    for t in session["turns"]:
        texts.append(t if isinstance(t, str) else t["text"] + "\n\n" + files_block(t.get("files", [])))
    return sum(len(tok(x, add_special_tokens=False)["input_ids"]) for x in texts)


def build(datasets_dir: Path, num_per_dataset: int, seed: int) -> list[dict]:
    from transformers import AutoTokenizer

    from dspark_sglang.models import smollm2_path
    tok = AutoTokenizer.from_pretrained(str(smollm2_path()))
    rng = random.Random(seed)
    modules = []
    for p in sorted(stdlib_dir().glob("*.py")):
        ex = module_excerpt(p, 9000)
        if ex and len(ex) > 2500:
            modules.append((p.name, ex))
    tasks = [(f"humaneval-{i}", t) for i, t in enumerate(load_first_turns(datasets_dir / "humaneval.jsonl", num_per_dataset))]
    tasks += [(f"mbpp-{i}", t) for i, t in enumerate(load_first_turns(datasets_dir / "mbpp.jsonl", num_per_dataset))]
    sessions = []
    for sid, task in tasks:
        for _attempt in range(50):
            repo = rng.sample(modules, 2)
            extra_name, extra_src = rng.choice([m for m in modules if m not in repo])
            session = {
                "id": sid, "system": SYSTEM,
                "context_files": [{"path": n, "content": src} for n, src in repo],
                "turns": [f"{task}\n\nWrite the solution in a new module `solution.py` of this repository.",
                          FOLLOW_UPS[0],
                          {"text": FOLLOW_UPS[1].format(path=extra_name),
                           "files": [{"path": extra_name, "content": extra_src}]},
                          FOLLOW_UPS[2]],
            }
            n = user_tokens(tok, session)
            if MIN_TOKENS <= n <= MAX_TOKENS:
                session["user_tokens"] = n
                sessions.append(session)
                break
        else:
            raise SystemExit(f"{sid}: no module mix sized {MIN_TOKENS}-{MAX_TOKENS} tokens in 50 tries")
    return sessions


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets-dir", default=str(ROOT.parent / "shared" / "datasets"))
    p.add_argument("--num-per-dataset", type=int, default=12, help="sessions from humaneval and from mbpp each")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "coding_sessions.jsonl"))
    args = p.parse_args()
    sessions = build(Path(args.datasets_dir), args.num_per_dataset, args.seed)
    with open(args.out, "w") as f:
        for s in sessions:
            f.write(json.dumps(s) + "\n")
    sizes = [s["user_tokens"] for s in sessions]
    print(f"wrote {len(sessions)} sessions to {args.out}; user tokens per session {min(sizes)}-{max(sizes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
