"""Greedy and beam search, batched: one call of the step decoder per word for all images (and beams) at once.

Both work with any StepDecoder (captioning.models.base: every registered family, and ensembles): `inputs` is whatever
the decoder's `start` reads (feature vectors, or ImageInputs with the maps), sliced into batches. With
`with_attention`, a decoder with attention gives its weights too: per caption, one (positions,) row per word, where
the decoder looked when it chose that word. States are lists of per-row tensors (TensorFlow's for the Keras
decoders, NumPy arrays for an exported one: captioning.inference), gathered, scattered and reordered here without
knowing what they hold (captioning.core.rows), so that training and inference share this loop.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from captioning.core import rows as ops

if TYPE_CHECKING:  # (its module imports TensorFlow, which decoding an export does without)
    from captioning.models.base import StepDecoder


def _batch_size(decoder, rows: int) -> int:
    """Images per batch: an attention decoder's per-image context is P times larger, so it takes fewer (and smaller
    batches let reading the next one overlap more of the decoding)."""
    return max(1, min(rows // 8, 128)) if decoder.has_attention else rows


def _batches(inputs, batch_size: int):
    """The inputs in batches; maps read from the cache are read one batch ahead, in a thread, while the current
    batch decodes (reading and converting the float16 maps costs about as much as decoding them)."""
    starts = range(0, len(inputs), batch_size)
    if not hasattr(inputs, "load"):
        yield from (inputs[start:start + batch_size] for start in starts)
        return
    with ThreadPoolExecutor(1) as pool:
        ahead = None
        for start in starts:
            current = ahead.result() if ahead is not None else inputs[start:start + batch_size].load()
            following = start + batch_size
            ahead = pool.submit(lambda s=following: inputs[s:s + batch_size].load()) if following < len(inputs) \
                else None
            yield current


def greedy_search(decoder: StepDecoder, inputs, max_length: int, batch_size: int = 2048,
                  with_attention: bool = False, no_repeat_ngram: int = 0):
    """The most likely next word at each step; word ids without start and end tokens (and, with `with_attention`,
    a list of (words, positions) attention arrays beside them; None each for a decoder without attention).
    With `no_repeat_ngram` n >= 2, a word that would repeat an n-gram of the caption is never chosen."""
    out, maps = [], []
    collect = with_attention and decoder.has_attention
    for batch in _batches(inputs, _batch_size(decoder, batch_size)):
        words, attention = _greedy_batch(decoder, batch, max_length, collect, no_repeat_ngram)
        out += words
        maps += attention if collect else [None] * len(words)
    return (out, maps) if with_attention else out


def _greedy_batch(decoder: StepDecoder, inputs, max_length: int, with_attention: bool, no_repeat_ngram: int = 0):
    context, states = decoder.start(inputs)
    n = len(inputs)
    tokens = np.full(n, decoder.start_id, np.int32)
    words = np.zeros((n, max_length), np.int32)
    finished = np.zeros(n, bool)
    alphas = []
    for t in range(max_length - 2):  # start + words + end fit in max_length, as in training
        repeats = _repeats(words[:, :t], ~finished, no_repeat_ngram)
        values, top, states, alpha = _step_live(decoder, tokens, states, context, ~finished,
                                                _candidates(decoder, 1, repeats), with_attention=with_attention)
        alphas.append(alpha)
        if repeats:
            _block(values, top, repeats)
            best = np.argmax(values, axis=1)  # the first allowed candidate (they come best first)
            tokens = top[np.arange(n), best].astype(np.int32)
        else:
            tokens = top[:, 0].astype(np.int32)
        words[:, t] = np.where(finished, 0, tokens)
        finished |= tokens == decoder.end_id
        if finished.all():
            break
    captions = [_strip(row, decoder.end_id) for row in words]
    if not with_attention:
        return captions, []
    stacked = np.stack(alphas, axis=1)  # (n, steps, P)
    return captions, [stacked[i, :len(ids)] for i, ids in enumerate(captions)]


def _step_live(decoder: StepDecoder, tokens: np.ndarray, states: list, context: tuple, live: np.ndarray, k: int,
               end_only: bool = False, with_attention: bool = False):
    """The top-k next words of the live rows only (unfinished hypotheses), so that the few long captions at the end
    of a batch do not cost a step for every row. Other rows get -inf candidates and keep their states (and zero
    attention). With `end_only`, the one candidate is the end token."""
    values = np.full((len(tokens), k), -np.inf, np.float32)
    ids = np.zeros((len(tokens), k), np.int32)
    alpha = None
    if with_attention:
        alpha = np.zeros((len(tokens), int(context[0].shape[1])), np.float32)
    index = np.flatnonzero(live)
    if index.size == 0:
        return values, ids, states, alpha
    everyone = index.size == len(tokens)
    sub_states = states if everyone else [ops.gather(s, index) for s in states]
    sub_context = context if everyone else tuple(ops.gather(c, index) for c in context)
    if end_only:
        logp, new_states = decoder.step(tokens[index], sub_states, sub_context)
        values[index, 0] = ops.to_numpy(logp)[:, decoder.end_id]
        ids[index] = decoder.end_id
    elif with_attention:
        values[index], ids[index], new_states, alpha[index] = decoder.step_top(
            tokens[index], sub_states, sub_context, k, with_attention=True)
    else:
        values[index], ids[index], new_states = decoder.step_top(tokens[index], sub_states, sub_context, k)
    if not everyone:
        new_states = [ops.scatter(s, index, new) for s, new in zip(states, new_states)]
    return values, ids, new_states, alpha


def _repeats(history: np.ndarray, live: np.ndarray, n: int) -> dict[int, list[int]]:
    """For each live row whose words so far (history: (rows, t)) hold an n-gram that the next word could repeat,
    the words that would repeat one (n = 0: none)."""
    out = {}
    if not n or history.shape[1] < n - 1:
        return out
    for row in np.flatnonzero(live):
        words = history[row].tolist()
        prefix = words[len(words) - n + 1:]
        repeats = {words[j + n - 1] for j in range(len(words) - n + 1) if words[j:j + n - 1] == prefix}
        if repeats:
            out[int(row)] = sorted(repeats)
    return out


def _candidates(decoder, k: int, repeats: dict[int, list[int]]) -> int:
    """How many next words each hypothesis takes from the graph: k, plus as many as any row may not choose, so
    that every row keeps its k best allowed ones (exactly what a search over the whole vocabulary would rank)."""
    spare = max((len(words) for words in repeats.values()), default=0)
    return min(k + spare, int(decoder.banned.shape[0]))


def _block(values: np.ndarray, ids: np.ndarray, repeats: dict[int, list[int]]) -> None:
    """Set to -inf the candidates (values, ids: (rows, c)) that would repeat an n-gram of their row."""
    for row, words in repeats.items():
        values[row, np.isin(ids[row], words)] = -np.inf


def _strip(row: np.ndarray, end_id: int) -> list[int]:
    ids = []
    for i in row:
        if i == end_id or i == 0:
            break
        ids.append(int(i))
    return ids


def beam_search(decoder: StepDecoder, inputs, max_length: int, width: int, length_penalty: float,
                batch_size: int = 512, with_attention: bool = False, no_repeat_ngram: int = 0):
    """For each image, `width` captions (word ids) with their scores, best first (and, with `with_attention`, each
    caption's attention, in the same order: per image a list of what greedy_search gives per caption).

    A hypothesis scores sum(log p) / length ** length_penalty (length counts the end token), which is also how
    beams are ranked at every step, so that short captions do not win merely by being short. A width above the
    vocabulary size is the vocabulary size. With `no_repeat_ngram` n >= 2, no hypothesis repeats an n-gram.
    """
    width = min(width, int(decoder.banned.shape[0]))
    out, maps = [], []
    collect = with_attention and decoder.has_attention
    for batch in _batches(inputs, _batch_size(decoder, batch_size)):
        beams, attention = _beam_batch(decoder, batch, max_length, width, length_penalty, collect, no_repeat_ngram)
        out += beams
        maps += attention if collect else [None] * len(beams)
    return (out, maps) if with_attention else out


def _beam_batch(decoder, inputs, max_length, k, alpha, with_attention, no_repeat_ngram=0):
    n = len(inputs)
    context, states = decoder.start(inputs)
    context = tuple(ops.repeat(c, k) for c in context)
    states = [ops.repeat(s, k) for s in states]
    seen = np.zeros((n, k, 0, int(context[0].shape[1]) if with_attention else 0), np.float32)
    tokens = np.full(n * k, decoder.start_id, np.int32)
    scores = np.full((n, k), -np.inf, np.float64)
    scores[:, 0] = 0.0  # all beams start identical: keep one so the first step yields k distinct words
    lengths = np.zeros((n, k), np.int64)
    finished = np.zeros((n, k), bool)
    words = np.zeros((n, k, 0), np.int32)
    rows = np.arange(n)[:, None]
    for t in range(max_length - 1):
        # The best k overall are among the best k continuations of each beam, so only k x k candidates per image
        # are ranked (a beam's length, hence its normalisation, is the same for all its continuations); when
        # repeats are blocked, each beam takes as many more as it may not choose.
        live = (~finished & np.isfinite(scores)).reshape(-1)
        # The last position holds the end token, as in training.
        end_only = t == max_length - 2
        repeats = {} if end_only else _repeats(words.reshape(n * k, words.shape[2]), live, no_repeat_ngram)
        per_beam = _candidates(decoder, k, repeats)
        values, ids, states, step_alpha = _step_live(decoder, tokens, states, context, live, per_beam,
                                                     end_only=end_only,
                                                     with_attention=with_attention and t < max_length - 2)
        _block(values, ids, repeats)
        values = values.astype(np.float64).reshape(n, k, per_beam)
        ids = ids.reshape(n, k, per_beam)
        # A finished hypothesis continues only with padding (id 0), at no cost, so it keeps its score.
        values[finished] = -np.inf
        values[finished, 0] = 0.0
        ids[finished] = 0
        total = scores[:, :, None] + values
        new_lengths = lengths + ~finished
        ranked = (total / (new_lengths[:, :, None] ** alpha)).reshape(n, k * per_beam)
        top = np.argsort(-ranked, axis=1, kind="stable")[:, :k]
        beam = top // per_beam
        word = ids.reshape(n, k * per_beam)[rows, top]
        scores = total.reshape(n, k * per_beam)[rows, top]
        lengths = new_lengths[rows, beam]
        finished = finished[rows, beam] | (word == decoder.end_id)
        words = np.concatenate([words[rows, beam], word[:, :, None]], axis=2)
        if with_attention:
            if step_alpha is None:  # the forced end token: its weights are not computed
                step_alpha = np.zeros((n * k, seen.shape[3]), np.float32)
            seen = np.concatenate([seen[rows, beam], step_alpha.reshape(n, k, -1)[rows, beam][:, :, None]], axis=2)
        gather = (rows * k + beam).reshape(-1)
        states = [ops.gather(s, gather) for s in states]
        tokens = word.reshape(-1)
        if finished.all():
            break
    final = scores / np.maximum(lengths, 1) ** alpha
    results, attention = [], []
    for i in range(n):
        kept = [b for b in np.argsort(-final[i]) if np.isfinite(final[i, b])]
        results.append([(_strip(words[i, b], decoder.end_id), float(final[i, b])) for b in kept])
        if with_attention:
            attention.append([seen[i, b, :len(ids)] for b, (ids, _) in zip(kept, results[-1])])
    return results, attention
