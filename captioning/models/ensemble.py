"""Ensembles: several trained decoders over one vocabulary, decoded as one model whose next-word distribution is the
mean of theirs (greedy and beam search unchanged: the ensemble is one more step decoder).

Members may mix the merge and the attention decoder: an attention member reads the maps, a merge member the
feature vectors of the same ImageInputs. Members may also read different features (e.g. one trained on flip-averaged
features, one on plain ones): the inputs are then MemberInputs, one part per feature setting, and each member reads
its own part. The ensemble's attention weights (for the app's maps) are the mean of its attention members' weights.
Members may be Keras step decoders (TensorFlow tensors) or exported ones (NumPy arrays, captioning.inference): the
mean and the top-k are taken by captioning.core.rows, on whichever the members give.
"""
from __future__ import annotations

import numpy as np

from captioning.core import rows as ops
from captioning.features.inputs import MemberInputs
from captioning.models import spec_of_model


class EnsembleError(ValueError):
    """Captioners that cannot be decoded together (another vocabulary or caption length, attention maps of another
    grid)."""


class EnsembleStepDecoder:
    """The step-decoder interface (captioning.models.base.StepDecoder) over several members. States and context are the
    members' own, concatenated (attention members first, so that context[0] holds the map positions).
    `parts`: for each decoder, which part of MemberInputs it reads (None: all read the same inputs)."""

    def __init__(self, decoders: list, parts: list[int] | None = None):
        order = sorted(range(len(decoders)), key=lambda i: not decoders[i].has_attention)
        self.members = [decoders[i] for i in order]
        self.parts = [None] * len(decoders) if parts is None else [parts[i] for i in order]
        first = self.members[0]
        self.has_attention = first.has_attention
        self.banned, self.start_id, self.end_id = first.banned, first.start_id, first.end_id
        self.signature = self.training_signature = None  # (an ensemble is decoded, never trained)
        # Each member's share of the context and states: (annotations, keys) and [h, c] for attention, the projected
        # image and [h, c] per layer for merge. Fixed here, so that one decoder serves several threads (app, server).
        self._sizes = [(d.context_count, d.state_count) for d in self.members]
        self.context_count, self.state_count = (sum(sizes) for sizes in zip(*self._sizes))

    def start(self, inputs):
        if self.parts[0] is not None and not isinstance(inputs, MemberInputs):
            raise ValueError("this ensemble's members read different features: give it MemberInputs "
                             "(Captioner.encode_images, pipeline.decoder_inputs), not one setting's inputs")
        context, states = [], []
        for member, part in zip(self.members, self.parts):
            own = inputs.parts[part] if isinstance(inputs, MemberInputs) else inputs
            own = own if member.has_attention or not hasattr(own, "maps") else own.features
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
        tokens = np.asarray(tokens, np.int32)
        logps, new_states, alphas = [], [], []
        for member, own_states, own_context in self._split(states, context):
            logp, member_states, alpha = member.step(tokens, own_states, own_context, with_attention=True)
            logps.append(logp)
            new_states += list(member_states)
            if member.has_attention:
                alphas.append(alpha)
        return ops.log_mean_exp(logps), new_states, ops.mean(alphas) if alphas else None

    def step(self, tokens, states, context, with_attention: bool = False):
        logp, new_states, alpha = self._mean_step(tokens, states, context)
        return (logp, new_states, alpha) if with_attention else (logp, new_states)

    def graph_step(self, tokens, states, context):
        import tensorflow as tf  # (graph steps are TensorFlow's: the Keras members' only)

        logps, new_states = [], []
        for member, own_states, own_context in self._split(states, context):
            logp, member_states = member.graph_step(tokens, own_states, own_context)
            logps.append(logp)
            new_states += list(member_states)
        return tf.reduce_logsumexp(tf.stack(logps), axis=0) - np.log(len(logps)).astype(np.float32), new_states

    def training_inputs(self, inputs, owner, tokens):
        raise TypeError("an ensemble is decoded, not trained: train or fine-tune its members one by one")

    def step_top(self, tokens, states, context, k: int, with_attention: bool = False):
        logp, new_states, alpha = self._mean_step(tokens, states, context)
        values, ids = ops.top_k(logp, k)
        out = (values, ids, new_states)
        return (*out, ops.to_numpy(alpha)) if with_attention else out


def check_compatible(captioners: list) -> None:
    """One error naming what differs: members must share vocabulary and caption length, and their attention decoders
    one map grid (the encoder and image size), so that their attention weights can be averaged."""
    first = captioners[0]
    grids = {(c.encoder, c.image_size) for captioner in captioners
             for c, model in zip(captioner.decoder_configs, captioner.models) if spec_of_model(model).reads_maps}
    if len(grids) > 1:
        raise EnsembleError("the attention members read maps of different grids (encoder, image_size: "
                            f"{', '.join(map(str, sorted(grids)))}); ensemble attention captioners of one encoder "
                            "and image size (merge captioners may differ)")
    for i, other in enumerate(captioners[1:], start=1):
        if other.vocab.words != first.vocab.words:
            raise EnsembleError(f"member {i} has another vocabulary than member 0 ({len(other.vocab.words)} against "
                                f"{len(first.vocab.words)} words); ensemble captioners trained on the same captions "
                                "with the same vocab_min_count")
        if other.config.max_length != first.config.max_length:
            raise EnsembleError(f"member {i} has max_length {other.config.max_length}, member 0 "
                                f"{first.config.max_length}")
