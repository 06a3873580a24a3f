"""The seed's training and decoding, kept only as the baseline the benchmarks compare against.

Prefix expansion: each caption of n words becomes n samples (photo, padded prefix) -> next word (one-hot), and the
LSTM (masked embedding) re-reads every prefix. Decoding calls `model.predict` once per word per image.
"""
from __future__ import annotations

import keras
import numpy as np


def build_seed_model(vocab_size: int, max_length: int, feature_dim: int, embedding: int, units: int,
                     dropout: float) -> keras.Model:
    features = keras.Input((feature_dim,))
    image = keras.layers.Dense(units, activation="relu")(keras.layers.Dropout(dropout)(features))
    tokens = keras.Input((max_length,))
    text = keras.layers.Embedding(vocab_size, embedding, mask_zero=True)(tokens)
    text = keras.layers.LSTM(units)(keras.layers.Dropout(dropout)(text))
    hidden = keras.layers.Dense(units, activation="relu")(keras.layers.add([image, text]))
    outputs = keras.layers.Dense(vocab_size, activation="softmax")(hidden)
    model = keras.Model([features, tokens], outputs)
    model.compile(loss="categorical_crossentropy", optimizer="adam")
    return model


def prefix_batches(features: np.ndarray, captions: list[list[list[int]]], max_length: int, vocab_size: int,
                   batch_size: int, seed: int = 0):
    """The seed's generator: every prefix of every caption is one sample."""
    rng = np.random.default_rng(seed)
    samples = [(i, seq, t) for i, caps in enumerate(captions) for seq in caps for t in range(1, len(seq))]
    while True:
        for start in range(0, len(samples), batch_size):
            picked = [samples[j] for j in rng.permutation(len(samples))[:batch_size]] if start == 0 else \
                samples[start:start + batch_size]
            x_image = features[[i for i, _, _ in picked]]
            x_seq = np.zeros((len(picked), max_length), np.int32)
            for row, (_, seq, t) in enumerate(picked):
                prefix = seq[:t][-max_length:]
                x_seq[row, max_length - len(prefix):] = prefix  # the seed pads on the left (pad_sequences)
            y = np.zeros((len(picked), vocab_size), np.float32)
            y[np.arange(len(picked)), [seq[t] for _, seq, t in picked]] = 1.0
            yield (x_image, x_seq), y


def seed_greedy_caption(model: keras.Model, feature: np.ndarray, start_id: int, end_id: int,
                        max_length: int) -> list[int]:
    """The seed's decoding: one model.predict per word, re-reading the whole prefix."""
    seq = [start_id]
    for _ in range(max_length - 1):
        padded = np.zeros((1, max_length), np.int32)
        padded[0, max_length - len(seq):] = seq
        word = int(np.argmax(model.predict([feature[None], padded], verbose=0)[0]))
        seq.append(word)
        if word == end_id:
            break
    return seq[1:]
