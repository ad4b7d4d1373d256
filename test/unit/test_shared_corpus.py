"""`SharedCorpus` (answers of finished requests, searched by prompt lookup) and its use by `PromptLookup`."""
from __future__ import annotations

import numpy as np
import pytest

from dspark_sglang.serving.prompt_lookup import PromptLookup
from dspark_sglang.serving.shared_corpus import KEY_LEN, PROMPT_TAIL, SharedCorpus


def _a(*tokens):
    return np.array(tokens, dtype=np.int64)


def test_longest_backward_match_wins_then_most_recent():
    corpus = SharedCorpus(capacity=1000)
    corpus.add(_a(8, 9, 1, 2, 3, 40, 41))          # matches "... 8 9 1 2 3" over 5 tokens
    corpus.add(_a(5, 1, 2, 3, 50, 51))             # more recent, matches over 3
    block = corpus.find(_a(7, 8, 9, 1, 2, 3), gamma=2)
    assert block.tokens.tolist() == [40, 41] and block.match_len == 5 and block.source == "shared"
    corpus.add(_a(6, 1, 2, 3, 60, 61))             # equal to the second: the most recent of the two
    assert corpus.find(_a(0, 1, 2, 3), gamma=2).tokens.tolist() == [60, 61]


def test_no_continuation_or_short_history_finds_nothing():
    corpus = SharedCorpus(capacity=1000)
    assert corpus.find(_a(1, 2, 3), gamma=4) is None                  # empty corpus
    corpus.add(_a(1, 2, 3, 4))
    assert corpus.find(_a(2, 3, 4), gamma=4) is None                  # "2 3 4" ends the document
    assert corpus.find(_a(2, 3), gamma=4) is None                     # shorter than a key
    assert corpus.find(_a(1, 2, 3), gamma=4).tokens.tolist() == [4]


def test_capacity_evicts_oldest_documents_and_their_keys():
    corpus = SharedCorpus(capacity=12)
    corpus.add(_a(1, 2, 3, 4, 5, 6))
    corpus.add(_a(11, 12, 13, 14, 15, 16))
    assert corpus.size == 12 and len(corpus) == 2
    corpus.add(_a(21, 22, 23, 24, 25))                                 # 17 > 12: the first document goes
    assert len(corpus) == 2 and corpus.size == 11
    assert corpus.find(_a(1, 2, 3), gamma=2) is None
    assert corpus.find(_a(11, 12, 13), gamma=2).tokens.tolist() == [14, 15]
    live = {doc for hits in corpus.index.values() for doc, _ in hits}
    assert live == set(corpus.docs)                                    # no index entry points at an evicted one
    assert len(corpus.index) == (6 - KEY_LEN + 1) + (5 - KEY_LEN + 1)


def test_each_key_keeps_its_most_recent_occurrences():
    corpus = SharedCorpus(capacity=1000, per_key=2)
    for tail in (10, 20, 30):
        corpus.add(_a(1, 2, 3, tail))
    assert [end for _, end in corpus.index[next(iter(corpus.index))]] == [3, 3] and len(corpus) == 3
    assert corpus.find(_a(1, 2, 3), gamma=1).tokens.tolist() == [30]


def test_a_key_collision_is_not_a_match():
    corpus = SharedCorpus(capacity=1000)
    corpus.add(_a(1, 2, 3, 4))
    folded = _a(1 + (1 << 21), 2, 3)                                   # same key, different first token
    assert corpus.find(folded, gamma=2) is None


def test_answers_keep_the_prompt_tail():
    corpus = SharedCorpus(capacity=1000)
    prompt = np.arange(100, 100 + 2 * PROMPT_TAIL)
    corpus.add_answer(np.concatenate([prompt, _a(7, 8, 9)]), prompt_len=prompt.size)
    (doc,) = corpus.docs.values()
    assert doc.size == PROMPT_TAIL + 3 and doc[0] == prompt[-PROMPT_TAIL]
    assert corpus.find(prompt[-KEY_LEN:], gamma=2).tokens.tolist() == [7, 8]   # the answer's first tokens
    corpus.add_answer(prompt, prompt_len=prompt.size)                          # no answer: nothing kept
    assert len(corpus) == 1


def test_rejects_bad_sizes():
    with pytest.raises(ValueError, match="capacity"):
        SharedCorpus(capacity=0)


def test_prompt_lookup_shares_finished_answers_and_keeps_tables_apart():
    lookup = PromptLookup(gamma=3, shared=SharedCorpus(capacity=1000))
    lookup.propose("a", [1, 2, 3], [4, 5, 6, 7], anchor=8)
    lookup.histories["a"].extend([8])
    lookup.drop("a")                                                   # its answer joins the corpus
    block = lookup.propose("b", [9, 9, 4, 5], [], anchor=6)            # "4 5 6": only in a's answer
    assert block.source == "shared" and block.tokens.tolist() == [7, 8] and block.match_len == 3
    own = lookup.propose("c", [4, 5, 6, 1, 4, 5], [], anchor=6)       # own "4 5 6" matches as far: own wins
    assert own.source == "context" and own.tokens.tolist() == [1, 4, 5, 6][:3]
    for _ in range(20):
        lookup.acceptance.record(3, True, verified=3, accepted=0, source="shared")
    assert lookup.acceptance.rates(3, True, "shared")[0] < 0.2
    assert lookup.acceptance.rates(3, True, "context")[0] == pytest.approx(lookup.acceptance.prior)
