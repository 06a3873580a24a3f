"""Ensembles: several trained decoders over the same features and vocabulary, decoded as one model whose next-word
distribution is the mean of theirs (greedy and beam search unchanged: the ensemble is one more step decoder).

Members may mix the merge and the attention decoder: an attention member reads the maps, a merge member the
feature vectors of the same ImageInputs. The ensemble's attention weights (for the app's maps) are the mean of its
attention members' weights.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf


class EnsembleError(ValueError):
    """Captioners that cannot be decoded together (other features, vocabulary or caption length)."""


class EnsembleStepDecoder:
    """The step-decoder interface (captioning.model.StepDecoder) over several members. States and context are the
    members' own, concatenated (attention members first, so that context[0] holds the map positions)."""

    def __init__(self, decoders: list):
        self.members = sorted(decoders, key=lambda d: not d.has_attention)
        first = self.members[0]
        self.has_attention = first.has_attention
        self.banned, self.start_id, self.end_id = first.banned, first.start_id, first.end_id
        self.signature = None
        # Each member's share of the context and states: (annotations, keys) and [h, c] for attention, the projected
        # image and [h, c] per layer for merge. Fixed here, so that one decoder serves several threads (app, server).
        self._sizes = [(2, 2) if d.has_attention else (1, 2 * len(d.cells)) for d in self.members]

    def start(self, inputs):
        context, states = [], []
        for member in self.members:
            own = inputs if member.has_attention or not hasattr(inputs, "maps") else inputs.features
            member_context, member_states = member.start(own)
            context += list(member_context)
            states += list(member_states)
        return tuple(context), states

    def _split(self, states, context):
        c = s = 0
        for member, (contexts, count) in zip(self.members, self._sizes):
            yield member, list(states[s:s + count]), tuple(context[c:c + contexts])
            c, s = c + contexts, s + count

    def _mean_step(self, tokens, states, context):
        """Log of the members' mean next-word probabilities, their new states, and the mean attention (or None)."""
        tokens = tf.convert_to_tensor(tokens, tf.int32)
        logps, new_states, alphas = [], [], []
        for member, own_states, own_context in self._split(states, context):
            out = member._step(tokens, own_states, own_context)
            logps.append(out[0])
            new_states += list(out[1])
            if member.has_attention:
                alphas.append(out[2])
        logp = tf.reduce_logsumexp(tf.stack(logps), axis=0) - np.log(len(logps)).astype(np.float32)
        return logp, new_states, tf.reduce_mean(tf.stack(alphas), axis=0) if alphas else None

    def step(self, tokens, states, context):
        logp, new_states, _ = self._mean_step(tokens, states, context)
        return logp, new_states

    def step_top(self, tokens, states, context, k: int, with_attention: bool = False):
        logp, new_states, alpha = self._mean_step(tokens, states, context)
        values, ids = tf.math.top_k(logp, k)
        out = (values.numpy(), ids.numpy(), new_states)
        return (*out, alpha.numpy()) if with_attention else out


def check_compatible(captioners: list) -> None:
    """One error naming what differs: members must read the same features and share vocabulary and length."""
    from captioning.pipeline import feature_key

    first = captioners[0]
    for i, other in enumerate(captioners[1:], start=1):
        if feature_key(other.config) != feature_key(first.config):
            raise EnsembleError(f"member {i} reads other features ({feature_key(other.config)}) than member 0 "
                                f"({feature_key(first.config)}); ensemble captioners of one encoder and flip setting")
        if other.vocab.words != first.vocab.words:
            raise EnsembleError(f"member {i} has another vocabulary than member 0 ({len(other.vocab.words)} against "
                                f"{len(first.vocab.words)} words); ensemble captioners trained on the same captions "
                                "with the same vocab_min_count")
        if other.config.max_length != first.config.max_length:
            raise EnsembleError(f"member {i} has max_length {other.config.max_length}, member 0 "
                                f"{first.config.max_length}")
