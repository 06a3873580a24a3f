"""Caption cleaning and the vocabulary (saved as JSON)."""
from __future__ import annotations

import collections
import json
import string
from pathlib import Path
from typing import Iterable

import numpy as np

PAD, UNK, START, END = "<pad>", "<unk>", "<start>", "<end>"
SPECIALS = (PAD, UNK, START, END)
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def clean_caption(caption: str) -> list[str]:
    """The seed's cleaning: lower case, punctuation stripped from words, non-alphabetic tokens dropped."""
    words = caption.lower().translate(_PUNCTUATION).split()
    return [word for word in words if word.isalpha()]


class Vocabulary:
    """Word <-> id mapping; ids 0..3 are the padding, unknown, start and end tokens."""

    def __init__(self, words: Iterable[str]):
        self.words = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.index = {word: i for i, word in enumerate(self.words)}

    @classmethod
    def build(cls, captions: Iterable[list[str]], min_count: int) -> "Vocabulary":
        counts = collections.Counter(word for caption in captions for word in caption)
        # Sorted by count, then alphabetically, so that the same captions always give the same ids.
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(kept)

    def __len__(self) -> int:
        return len(self.words)

    @property
    def pad_id(self) -> int:
        return self.index[PAD]

    @property
    def start_id(self) -> int:
        return self.index[START]

    @property
    def end_id(self) -> int:
        return self.index[END]

    def encode(self, words: list[str], max_length: int) -> list[int]:
        """Start token, word ids (unknown words -> <unk>), end token; cut to max_length keeping the end token."""
        unk = self.index[UNK]
        ids = [self.index.get(word, unk) for word in words][: max_length - 2]
        return [self.start_id, *ids, self.end_id]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words up to the end token, without special tokens except <unk>."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id or i == self.pad_id:
                break
            if i != self.start_id:
                words.append(self.words[i])
        return words

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({"words": self.words}, indent=0) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Vocabulary":
        words = json.loads(Path(path).read_text())["words"]
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"{path} is not a captioning vocabulary (its first words are not {SPECIALS})")
        return cls(words[len(SPECIALS):])


def pad_batch(sequences: list[list[int]], length: int | None = None) -> np.ndarray:
    """Right-pad id sequences with 0 into one int32 array."""
    length = length or max(len(s) for s in sequences)
    out = np.zeros((len(sequences), length), dtype=np.int32)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = seq[:length]
    return out
