"""Compact target-feature cache: per token, float16 hidden states of ONLY the target layers the
drafter reads (`target_layer_ids`, raw residual stream = HF hidden_states[l+1]) plus the target's
final hidden state (after the final norm; target logits = lm_head(final), recomputed in training).

Layout in `cache_dir`:
    features.bin   float16 [total_tokens, (n+1)·H] row-major, appended sequence by sequence
    index.jsonl    one line per sequence: {"uid", "offset", "length", "prompt_len"} (token rows)
    tokens.bin     int32 [total_tokens] the token ids (prompt + answer)
Bytes/token = 2·(n+1)·H (SmolLM2-135M, n=4, H=576: 5760 B/token).

Resumable: sequences are appended and indexed only after their rows are on disk; on restart, files
are truncated to the last indexed row and finished uids are skipped.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from dspark_sglang.training.data import read_shard

FEATURES_FILE, INDEX_FILE, TOKENS_FILE, META_FILE = "features.bin", "index.jsonl", "tokens.bin", "meta.json"


@dataclass(frozen=True)
class SequenceEntry:
    """One cached sequence: rows offset..offset+length of the cache; loss on rows >= prompt_len."""

    uid: str
    offset: int
    length: int
    prompt_len: int


def _read_index(cache_dir: Path) -> list[SequenceEntry]:
    """Complete index entries (a torn last line of a killed run is ignored, as for answer shards)."""
    return [SequenceEntry(**record) for record in read_shard(cache_dir / INDEX_FILE)]


@torch.no_grad()
def build_feature_cache(model, records: Sequence[dict], cache_dir: str | Path, target_layer_ids: Sequence[int],
                        batch_tokens: int = 4096, progress: bool = True) -> dict:
    """Run the target over prompt+answer of every record and append its features to the cache.

    Args:
        model:            HF causal LM (the target).
        records:          from `data.generate_answers` ({"uid", "prompt_ids", "answer_ids"}).
        cache_dir:        output folder (created; resumable).
        target_layer_ids: layers the drafter reads (never the final one).
        batch_tokens:     max padded tokens per forward.
    Returns:
        the cache's meta dict (bytes_per_token, total_tokens, total_bytes, ...).
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    hidden = model.config.hidden_size
    width = (len(target_layer_ids) + 1) * hidden
    meta = {"target_layer_ids": list(target_layer_ids), "hidden_size": hidden, "row_width": width,
            "dtype": "float16", "bytes_per_token": 2 * width}
    entries = _read_index(cache_dir)
    if entries and (cache_dir / META_FILE).is_file():
        old = json.loads((cache_dir / META_FILE).read_text())
        if old.get("target_layer_ids") != meta["target_layer_ids"] or old.get("hidden_size") != hidden:
            raise ValueError(f"feature cache {cache_dir} holds target layers {old.get('target_layer_ids')} (hidden "
                             f"{old.get('hidden_size')}), not {meta['target_layer_ids']} (hidden {hidden}) -> fix: pass "
                             "the same --target-layer-ids to every stage, or use a new --work-dir")
    total = entries[-1].offset + entries[-1].length if entries else 0
    # Truncate torn tails of a killed run to the last indexed row.
    for name, row_bytes in ((FEATURES_FILE, 2 * width), (TOKENS_FILE, 4)):
        path = cache_dir / name
        with open(path, "ab") as f:
            f.truncate(total * row_bytes)
    with open(cache_dir / INDEX_FILE, "w") as f:
        for e in entries:
            f.write(json.dumps(e.__dict__) + "\n")
    done = {e.uid for e in entries}
    todo = sorted((r for r in records if r["uid"] not in done), key=lambda r: len(r["prompt_ids"]) + len(r["answer_ids"]))
    feat_f = open(cache_dir / FEATURES_FILE, "ab")
    tok_f = open(cache_dir / TOKENS_FILE, "ab")
    idx_f = open(cache_dir / INDEX_FILE, "a")
    bar = tqdm(total=len(todo), desc="features", unit="seq", disable=not progress)
    i = 0
    while i < len(todo):
        seq_len = len(todo[i]["prompt_ids"]) + len(todo[i]["answer_ids"])
        n = max(1, batch_tokens // seq_len)
        batch = todo[i:i + n]
        i += len(batch)
        seqs = [r["prompt_ids"] + r["answer_ids"] for r in batch]
        w = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), w, dtype=torch.int64)
        mask = torch.zeros_like(ids)
        for j, s in enumerate(seqs):                                       # right padding: positions 0..
            ids[j, :len(s)] = torch.tensor(s)
            mask[j, :len(s)] = 1
        # The base model only (no lm_head over all positions: the trainer recomputes target logits).
        out = model.get_decoder()(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                                  output_hidden_states=True)
        feats = torch.cat([out.hidden_states[l + 1] for l in target_layer_ids] + [out.last_hidden_state], dim=-1)
        feats = feats.to(torch.float16).cpu().numpy()                      # [B, W, (n+1)H]
        for j, (r, s) in enumerate(zip(batch, seqs)):
            feat_f.write(feats[j, :len(s)].tobytes())
            tok_f.write(np.asarray(s, dtype=np.int32).tobytes())
            feat_f.flush(); tok_f.flush()
            entry = SequenceEntry(r["uid"], total, len(s), len(r["prompt_ids"]))
            idx_f.write(json.dumps(entry.__dict__) + "\n")
            total += len(s)
        idx_f.flush()
        bar.update(len(batch))
    bar.close()
    for f in (feat_f, tok_f, idx_f):
        f.close()
    meta.update(total_tokens=total, total_bytes=total * 2 * width, num_sequences=len(_read_index(cache_dir)))
    with open(cache_dir / META_FILE, "w") as f:
        json.dump(meta, f, indent=2)
    return meta


class FeatureCache:
    """Read-only memory-mapped view of a feature cache.

    Example:
        >>> cache = FeatureCache(".cache/train/features")  # doctest: +SKIP
        >>> ids, ctx, final, prompt_len = cache.sequence(0)   # [T], [T, n·H], [T, H], int  # doctest: +SKIP
    """

    def __init__(self, cache_dir: str | Path) -> None:
        cache_dir = Path(cache_dir)
        with open(cache_dir / META_FILE) as f:
            self.meta = json.load(f)
        self.entries = _read_index(cache_dir)
        total = self.entries[-1].offset + self.entries[-1].length if self.entries else 0
        width = self.meta["row_width"]
        self.hidden_size = self.meta["hidden_size"]
        self.features = np.memmap(cache_dir / FEATURES_FILE, dtype=np.float16, mode="r", shape=(total, width))
        self.tokens = np.memmap(cache_dir / TOKENS_FILE, dtype=np.int32, mode="r", shape=(total,))

    def __len__(self) -> int:
        return len(self.entries)

    def length(self, i: int) -> int:
        """Tokens of sequence i (prompt + answer)."""
        return self.entries[i].length

    def sequence(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(token ids [T] int64, context features [T, n·H] fp16, final hidden [T, H] fp16, prompt_len)."""
        e = self.entries[i]
        rows = torch.from_numpy(np.array(self.features[e.offset:e.offset + e.length]))
        ids = torch.from_numpy(np.array(self.tokens[e.offset:e.offset + e.length])).long()
        return ids, rows[:, :-self.hidden_size], rows[:, -self.hidden_size:], e.prompt_len
