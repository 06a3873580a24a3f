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
        _, top, states = _step_live(decoder, tokens, states, image, ~finished, 1)
        tokens = top[:, 0].astype(np.int32)
        words[:, t] = np.where(finished, 0, tokens)
        finished |= tokens == decoder.end_id
        if finished.all():
            break
    return [_strip(row, decoder.end_id) for row in words]


def _step_live(decoder: StepDecoder, tokens: np.ndarray, states: list[tf.Tensor], image: tf.Tensor,
               live: np.ndarray, k: int, end_only: bool = False):
    """The top-k next words of the live rows only (unfinished hypotheses), so that the few long captions at the end
    of a batch do not cost a step for every row. Other rows get -inf candidates and keep their states.
    With `end_only`, the one candidate is the end token."""
    values = np.full((len(tokens), k), -np.inf, np.float32)
    ids = np.zeros((len(tokens), k), np.int32)
    index = np.flatnonzero(live)
    if index.size == 0:
        return values, ids, states
    everyone = index.size == len(tokens)
    sub_states = states if everyone else [tf.gather(s, index) for s in states]
    sub_image = image if everyone else tf.gather(image, index)
    if end_only:
        logp, new_states = decoder.step(tokens[index], sub_states, sub_image)
        values[index, 0] = logp.numpy()[:, decoder.end_id]
        ids[index] = decoder.end_id
    else:
        values[index], ids[index], new_states = decoder.step_top(tokens[index], sub_states, sub_image, k)
    if not everyone:
        new_states = [tf.tensor_scatter_nd_update(s, index[:, None], new) for s, new in zip(states, new_states)]
    return values, ids, new_states


def _strip(row: np.ndarray, end_id: int) -> list[int]:
    ids = []
    for i in row:
        if i == end_id or i == 0:
            break
        ids.append(int(i))
    return ids


def beam_search(decoder: StepDecoder, features: np.ndarray, max_length: int, width: int,
                length_penalty: float, batch_size: int = 512) -> list[list[tuple[list[int], float]]]:
    """For each image, `width` captions (word ids) with their scores, best first.

    A hypothesis scores sum(log p) / length ** length_penalty (length counts the end token), which is also how
    beams are ranked at every step, so that short captions do not win merely by being short. A width above the
    vocabulary size is the vocabulary size.
    """
    width = min(width, int(decoder.banned.shape[0]))
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
        # The best k overall are among the best k continuations of each beam, so only k x k candidates per image
        # are ranked (a beam's length, hence its normalisation, is the same for all its continuations).
        live = (~finished & np.isfinite(scores)).reshape(-1)
        # The last position holds the end token, as in training.
        values, ids, states = _step_live(decoder, tokens, states, image, live, k, end_only=t == max_length - 2)
        values = values.astype(np.float64).reshape(n, k, k)
        ids = ids.reshape(n, k, k)
        # A finished hypothesis continues only with padding (id 0), at no cost, so it keeps its score.
        values[finished] = -np.inf
        values[finished, 0] = 0.0
        ids[finished] = 0
        total = scores[:, :, None] + values
        new_lengths = lengths + ~finished
        ranked = (total / (new_lengths[:, :, None] ** alpha)).reshape(n, k * k)
        top = np.argsort(-ranked, axis=1, kind="stable")[:, :k]
        beam = top // k
        word = ids.reshape(n, k * k)[rows, top]
        scores = total.reshape(n, k * k)[rows, top]
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
