"""`SharedCorpus`: the answers of recently finished requests, indexed for prompt lookup across requests.

A request's own context (`prompt_lookup.find_continuation`) holds what it quotes; what it shares with
*other* requests is the boilerplate of answers to similar tasks: the test-class scaffolding of every "add
tests" turn, the "Here is the refactored function:" preamble, the fix pattern repeated across sessions.
SGLang's NGRAM keeps such a cache across requests, and SuffixDecoding (Oliaro et al., 2024) built its
speedups on agentic and coding traffic on one. This corpus keeps the outputs of the last finished requests
(each with the last `PROMPT_TAIL` tokens of its prompt, so that an answer's first tokens can be matched
from the chat template's ending), up to `capacity` tokens, oldest evicted first.

Index: every KEY_LEN-gram → its last `per_key` occurrences (document, position after it). A lookup takes
the history's last KEY_LEN tokens, measures how far back each occurrence keeps matching the history (up
to `max_match` tokens; a key collision only shortens that to < KEY_LEN, and such a match is dropped) and
returns the tokens that followed the longest one (the most recent among equals).

Lossless like every lookup block: a one-hot proposal verified against the target; nothing of another
request reaches an output unless the target itself would produce it.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from dspark_sglang.serving.prompt_lookup import MAX_MATCH, LookupBlock

KEY_LEN = 3
"""Tokens of the history's suffix that select the candidate occurrences."""

PROMPT_TAIL = 32
"""Prompt tokens kept before each answer (the end of the chat template and the question)."""

_BITS = 21
"""Bits per token in an n-gram key (ids ≥ 2^21 fold onto smaller ones: a collision, caught by the match)."""


def _keys(tokens: np.ndarray) -> np.ndarray:
    """[T] int64 tokens -> [T − KEY_LEN + 1] int64 keys of their KEY_LEN-grams (key j covers tokens j..j+2)."""
    t = tokens.astype(np.int64) & ((1 << _BITS) - 1)
    return (t[:-2] << (2 * _BITS)) | (t[1:-1] << _BITS) | t[2:]


class SharedCorpus:
    """Recently finished requests' answers, searchable by the last tokens of a history.

    Example:
        >>> corpus = SharedCorpus(capacity=100)
        >>> corpus.add(np.array([7, 1, 2, 3, 4, 5, 6]))             # an earlier answer
        >>> block = corpus.find(np.array([9, 9, 1, 2, 3]), gamma=2)  # "1 2 3" continues with "4 5"
        >>> block, block.source
        (LookupBlock(tokens=array([4, 5]), match_len=3), 'shared')
        >>> corpus.find(np.array([7, 1, 2, 3]), gamma=8).match_len  # the match runs back over "7" too
        4
    """

    def __init__(self, capacity: int = 1 << 18, per_key: int = 4, max_match: int = MAX_MATCH) -> None:
        if capacity < 1 or per_key < 1:
            raise ValueError(f"SharedCorpus needs capacity >= 1 and per_key >= 1; got {capacity}, {per_key}")
        self.capacity, self.per_key, self.max_match = capacity, per_key, max_match
        self.docs: OrderedDict[int, np.ndarray] = OrderedDict()   # doc id -> [T] int64 tokens, oldest first
        self.index: dict[int, list[tuple[int, int]]] = {}          # key -> [(doc, end)], most recent last
        self.size = 0
        """Tokens held (Σ document lengths ≤ capacity)."""
        self._next_doc = 0

    def add(self, tokens) -> None:
        """Index one finished request's tokens (its answer, with the prompt tail before it); the oldest
        documents are evicted beyond `capacity` tokens."""
        tokens = np.asarray(tokens, dtype=np.int64)[-self.capacity:]
        if tokens.size <= KEY_LEN:
            return
        doc, self._next_doc = self._next_doc, self._next_doc + 1
        self.docs[doc] = tokens
        self.size += tokens.size
        per_key = self.per_key
        for end, key in enumerate(_keys(tokens).tolist(), start=KEY_LEN):
            hits = self.index.setdefault(key, [])
            hits.append((doc, end))
            if len(hits) > per_key:
                del hits[0]
        while self.size > self.capacity:
            self._evict_oldest()

    def add_answer(self, tokens: np.ndarray, prompt_len: int) -> None:
        """Index a finished request's answer, tokens[prompt_len:], with the PROMPT_TAIL prompt tokens before
        it (nothing when it answered nothing)."""
        if tokens.size > prompt_len:
            self.add(tokens[max(0, prompt_len - PROMPT_TAIL):])

    def _evict_oldest(self) -> None:
        doc, tokens = self.docs.popitem(last=False)
        self.size -= tokens.size
        for key in set(_keys(tokens).tolist()):
            hits = self.index.get(key)
            if hits is None:
                continue
            hits[:] = [h for h in hits if h[0] != doc]
            if not hits:
                del self.index[key]

    def find(self, history: np.ndarray, gamma: int) -> LookupBlock | None:
        """The ≤ γ tokens that followed the occurrence of history's suffix matching it longest (≥ KEY_LEN
        tokens, up to `max_match`; the most recent among equals), or None."""
        if history.size < KEY_LEN or not self.docs:
            return None
        hits = self.index.get(int(_keys(history[-KEY_LEN:])[0]))
        if not hits:
            return None
        best, best_len = None, KEY_LEN - 1
        for doc, end in hits:                                       # oldest first: ties go to the later one
            tokens = self.docs[doc]
            if end >= tokens.size:                                  # nothing followed it
                continue
            reach = min(self.max_match, end, history.size)
            same = tokens[end - reach:end][::-1] == history[history.size - reach:][::-1]   # [reach] back from the end
            length = reach if same.all() else int(np.argmin(same))
            if length >= best_len:
                best, best_len = (tokens, end), length
        if best is None or best_len < KEY_LEN:
            return None
        tokens, end = best
        return LookupBlock(tokens=tokens[end:end + gamma].copy(), match_len=best_len, source="shared")

    def __len__(self) -> int:
        return len(self.docs)
