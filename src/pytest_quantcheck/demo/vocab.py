"""A SentencePiece-style vocabulary learned from text by byte-pair merges.

llama.cpp's SPM tokenizer turns spaces into ``▁``, starts from single characters and repeatedly
joins the adjacent pair whose concatenation is in the vocabulary with the highest score; bytes with
no token of their own fall back to ``<0xXX>`` tokens. Scoring merged pieces by ``-rank`` makes that
procedure replay the merges in the order they were learned.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from numpy.typing import NDArray

SPACE = "\u2581"
# llama.cpp token types
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6
SPECIALS = ("<unk>", "<s>", "</s>")
BOS_ID, EOS_ID, UNK_ID = 1, 2, 0


@dataclass(frozen=True)
class Vocab:
    pieces: list[str]
    scores: NDArray[np.float32]
    types: NDArray[np.int32]

    def __len__(self) -> int:
        return len(self.pieces)


def _words(text: str) -> Counter[str]:
    spm = SPACE + text.replace(" ", SPACE)
    # Merges never cross a word start or a newline, as in SentencePiece's training.
    return Counter(re.findall(f"{SPACE}*[^{SPACE}\\n]+|{SPACE}+", spm))


def learn_vocab(text: str, size: int) -> Vocab:
    words = _words(text)
    chars = sorted({c for w in words for c in w})
    base = [*SPECIALS, *(f"<0x{b:02X}>" for b in range(256)), *chars]
    n_merges = size - len(base)
    if n_merges < 0:
        raise ValueError(f"a vocabulary of {size} cannot hold {len(base)} base pieces")

    seqs = {w: list(w) for w in words}
    pair_count: Counter[tuple[str, str]] = Counter()
    pair_words: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
    for w, seq in seqs.items():
        for pair in pairwise(seq):
            pair_count[pair] += words[w]
            pair_words[pair].add(w)

    merged: list[str] = []
    for _ in range(n_merges):
        if not pair_count:
            break
        # The most frequent pair; ties broken by the pair itself so the result is deterministic.
        best = max(pair_count.items(), key=lambda kv: (kv[1], kv[0]))[0]
        joined = best[0] + best[1]
        merged.append(joined)
        for w in list(pair_words.pop(best, ())):
            seq, n = seqs[w], words[w]
            for pair in pairwise(seq):
                pair_count[pair] -= n
                if pair_count[pair] <= 0:
                    del pair_count[pair]
            out: list[str] = []
            i = 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[w] = out
            for pair in pairwise(out):
                pair_count[pair] += n
                pair_words[pair].add(w)

    pieces = base + merged
    scores = np.zeros(len(pieces), dtype=np.float32)
    scores[len(base) :] = -np.arange(1, len(merged) + 1, dtype=np.float32)
    types = np.full(len(pieces), NORMAL, dtype=np.int32)
    types[UNK_ID] = UNKNOWN
    types[BOS_ID] = types[EOS_ID] = CONTROL
    types[3 : 3 + 256] = BYTE
    return Vocab(pieces, scores, types)
