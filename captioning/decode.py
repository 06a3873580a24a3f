"""Greedy and beam search, batched: one call of the step decoder per word for all images (and beams) at once."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from captioning.model import StepDecoder


def greedy_search(decoder: StepDecoder, features: np.ndarray, max_length: int,
                  batch_size: int = 2048) -> list[list[int]]:
    """The most likely next word at each step; word ids without start and end tokens."""
    out: list[list[int]] = []
    for start in range(0, len(features), batch_size):
        out += _greedy_batch(decoder, features[start:start + batch_size], max_length)
    return out


def _greedy_batch(decoder: StepDecoder, features: np.ndarray, max_length: int) -> list[list[int]]:
    n = len(features)
    image = decoder.image_vectors(features)
    states = decoder.initial_states(n)
    tokens = np.full(n, decoder.start_id, np.int32)
    words = np.zeros((n, max_length), np.int32)
    finished = np.zeros(n, bool)
    for t in range(max_length - 2):  # start + words + end fit in max_length, as in training
        logp, states = decoder.step(tokens, states, image)
        tokens = np.argmax(logp.numpy(), axis=-1).astype(np.int32)
        words[:, t] = np.where(finished, 0, tokens)
        finished |= tokens == decoder.end_id
        if finished.all():
            break
    return [_strip(row, decoder.end_id) for row in words]


def _strip(row: np.ndarray, end_id: int) -> list[int]:
    ids = []
    for i in row:
        if i == end_id or i == 0:
            break
        ids.append(int(i))
    return ids


def beam_search(decoder: StepDecoder, features: np.ndarray, max_length: int, width: int = 3,
                length_penalty: float = 1.0, batch_size: int = 512) -> list[list[tuple[list[int], float]]]:
    """For each image, `width` captions (word ids) with their scores, best first.

    A hypothesis scores sum(log p) / length ** length_penalty (length counts the end token), which is also how
    beams are ranked at every step, so that short captions do not win merely by being short.
    """
    out: list[list[tuple[list[int], float]]] = []
    for start in range(0, len(features), batch_size):
        out += _beam_batch(decoder, features[start:start + batch_size], max_length, width, length_penalty)
    return out


def _beam_batch(decoder, features, max_length, k, alpha):
    n = len(features)
    image = tf.repeat(decoder.image_vectors(features), k, axis=0)
    states = decoder.initial_states(n * k)
    tokens = np.full(n * k, decoder.start_id, np.int32)
    scores = np.full((n, k), -np.inf, np.float64)
    scores[:, 0] = 0.0  # all beams start identical: keep one so the first step yields k distinct words
    lengths = np.zeros((n, k), np.int64)
    finished = np.zeros((n, k), bool)
    words = np.zeros((n, k, 0), np.int32)
    rows = np.arange(n)[:, None]
    for t in range(max_length - 1):
        logp, states = decoder.step(tokens, states, image)
        logp = logp.numpy().astype(np.float64).reshape(n, k, -1)
        vocab = logp.shape[-1]
        if t == max_length - 2:  # the last position holds the end token, as in training
            end = logp[:, :, decoder.end_id].copy()
            logp[:] = -np.inf
            logp[:, :, decoder.end_id] = end
        # A finished hypothesis continues only with padding (id 0), at no cost, so it keeps its score.
        logp[finished] = -np.inf
        logp[finished, 0] = 0.0
        total = scores[:, :, None] + logp
        new_lengths = lengths + ~finished
        ranked = total / (new_lengths[:, :, None] ** alpha)
        flat = ranked.reshape(n, k * vocab)
        top = np.argpartition(-flat, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(flat, top, 1), axis=1), 1)
        beam, word = top // vocab, (top % vocab).astype(np.int32)
        scores = total.reshape(n, k * vocab)[rows, top]
        lengths = new_lengths[rows, beam]
        finished = finished[rows, beam] | (word == decoder.end_id)
        words = np.concatenate([words[rows, beam], word[:, :, None]], axis=2)
        gather = (rows * k + beam).reshape(-1)
        states = [tf.gather(s, gather) for s in states]
        tokens = word.reshape(-1)
        if finished.all():
            break
    final = scores / np.maximum(lengths, 1) ** alpha
    results = []
    for i in range(n):
        order = np.argsort(-final[i])
        results.append([(_strip(words[i, b], decoder.end_id), float(final[i, b])) for b in order
                        if np.isfinite(final[i, b])])
    return results
