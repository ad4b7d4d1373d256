"""On-policy training answers: the TARGET regenerates the answer of every prompt (DeepSpec recipe:
T=0.7, top-p 0.8, top-k 20, the chat template), in batches, appended to a JSONL shard as it goes.

The shard is the resumability record: a killed job restarts, reads the uids already written and
generates only the rest. A torn last line (killed mid-write) is dropped on read and rewritten.
Each record: {"uid", "source", "prompt_ids": [...], "answer_ids": [...]} — answer_ids end with EOS
when the target stopped by itself.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tqdm import tqdm

from dspark_sglang.training.prompts import Prompt

REFERENCES_FILE = "references.jsonl"
"""Off-policy code records (real stdlib source as the answer), next to the on-policy shard."""


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling of the regenerated answers (DSpark §4 / DeepSpec defaults)."""

    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    max_new_tokens: int = 256
    max_prompt_tokens: int = 512
    """Prompts longer than this (after the chat template) are skipped."""
    batch_size: int = 16
    seed: int = 0


def read_shard(path: str | Path) -> list[dict]:
    """Complete records of a JSONL shard (a torn final line is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with path.open() as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break                                                   # torn last line of a killed run
    return records


def _repair_shard(path: Path, records: list[dict]) -> None:
    """Rewrite the shard with only complete records if its tail is torn."""
    if not path.is_file():
        return
    with path.open() as f:
        num_lines = sum(1 for _ in f)
    if num_lines != len(records):
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, path)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Chat-template ids of a one-turn user message with the generation prompt (as the evaluator)."""
    chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(chat, add_special_tokens=False)["input_ids"]


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.no_grad()
def generate_batch(model, prompt_ids: Sequence[list[int]], cfg: GenerationConfig, pad_id: int,
                   eos_ids: Sequence[int], generator_seed: int) -> list[list[int]]:
    """Sampled answers for a batch of prompts (left-padded HF generate); EOS kept, padding cut."""
    device = model.device
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.int64)              # [B, W]
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompt_ids):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    torch.manual_seed(generator_seed)                                   # per-batch seed: resumable
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                         temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                         max_new_tokens=cfg.max_new_tokens, pad_token_id=pad_id, eos_token_id=list(eos_ids))
    answers = []
    for row in out[:, width:].tolist():
        ans = []
        for t in row:
            ans.append(t)
            if t in eos_ids:
                break
        answers.append(ans)
    return answers


def resume_shard(shard: Path, tokenizer, prompts: Sequence[Prompt], cfg: GenerationConfig,
                 max_prompts: int | None) -> tuple[list[dict], list[tuple[Prompt, list[int]]]]:
    """Records already in `shard` (torn tail repaired) and the (prompt, chat ids) still to answer: the first
    `max_prompts` prompts not in the shard whose template ids fit `cfg.max_prompt_tokens`."""
    shard.parent.mkdir(parents=True, exist_ok=True)
    records = read_shard(shard)
    _repair_shard(shard, records)
    done = {r["uid"] for r in records}
    todo = []
    for p in (prompts[:max_prompts] if max_prompts else prompts):
        if p.uid not in done:
            ids = encode_prompt(tokenizer, p.text)
            if len(ids) <= cfg.max_prompt_tokens:
                todo.append((p, ids))
    return records, todo


def answer_eos_ids(model, tokenizer) -> tuple[int, ...]:
    """Ids that end an answer: the tokenizer's EOS and the model's generation_config EOS id(s)."""
    gen_eos = model.generation_config.eos_token_id
    gen_eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
    return tuple({tokenizer.eos_token_id, *gen_eos} - {None})


def generate_answers(model, tokenizer, prompts: Sequence[Prompt], shard: str | Path,
                     cfg: GenerationConfig = GenerationConfig(), max_prompts: int | None = None,
                     progress: bool = True) -> list[dict]:
    """Regenerate answers for `prompts` into `shard` (JSONL), skipping uids already there.

    Args:
        model, tokenizer: the target (HF causal LM) and its tokenizer.
        prompts:          training prompts in a fixed order; the first `max_prompts` are used.
        shard:            JSONL output path (appended to; resumable).
    Returns:
        all records of the shard after the run.

    Example:
        >>> recs = generate_answers(model, tok, training_prompts(ds_dir, 300), ".cache/train/answers.jsonl")  # doctest: +SKIP
    """
    shard = Path(shard)
    records, todo = resume_shard(shard, tokenizer, prompts, cfg, max_prompts)
    eos_ids = answer_eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    bar = tqdm(total=len(todo), desc="generate", unit="prompt", disable=not progress)
    with shard.open("a") as f:
        for batch in _batches(todo, cfg.batch_size):
            seed = cfg.seed * 1_000_003 + sum(hash_uid(p.uid) for p, _ in batch) % 1_000_003
            answers = generate_batch(model, [ids for _, ids in batch], cfg, pad_id, eos_ids, seed)
            for (p, ids), ans in zip(batch, answers):
                rec = {"uid": p.uid, "source": p.source, "prompt_ids": ids, "answer_ids": ans}
                f.write(json.dumps(rec) + "\n")
                records.append(rec)
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(batch))
    bar.close()
    return records


def hash_uid(uid: str) -> int:
    """Stable (process-independent) hash of a uid: Python's str hash is salted per process."""
    h = 0
    for ch in uid.encode():
        h = (h * 131 + ch) % 2_147_483_647
    return h


def reference_code_records(tokenizer, num: int, seed: int = 0, skip: int = 0) -> list[dict]:
    """Cheap OFF-policy records: "write this function" prompts (the signature) answered with the real stdlib source
    (no generation, only a prefill in the feature stage). The target's own distribution still drives the
    L1/confidence terms (its logits at every position come from the cache); only the context is not
    sampled from the target. Uses the stdlib functions after the first `skip` ones of the same shuffle.
    """
    import random

    from dspark_sglang.training.prompts import stdlib_functions
    funcs = stdlib_functions()
    random.Random(seed + 1).shuffle(funcs)
    out = []
    for name, src in funcs[skip:skip + num]:
        head = src.splitlines()[0]                          # the signature only: short prompt, long answer
        text = f"Write the Python function `{name}`:\n\n```python\n{head}\n```"
        answer = tokenizer(f"```python\n{src}\n```", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append({"uid": f"ref:{name}", "source": "code-reference", "prompt_ids": encode_prompt(tokenizer, text),
                    "answer_ids": answer})
    return out
