"""What every decoder offers the rest of the package: the `StepDecoder` protocol that greedy search, beam search,
SCST, ensembles and attention maps use, and the pieces of TensorFlow all decoders share (the masked loss, the
logits never generated).

A decoder family is a Keras model built for teacher forcing (`DecoderSpec.build`, see captioning.models) plus a
step decoder over the same layers: one word at a time for a batch of images, its state carried as a list of tensors
of fixed per-row shape, so that the searches can gather, scatter and reorder rows without knowing what they hold.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import keras
import numpy as np
import tensorflow as tf

from captioning.core.graph import host_tensor
from captioning.data.text import PAD, START, UNK, Vocabulary

# The package of this project's Keras layers: a saved decoder names them captioning>Gather, captioning>AttentionLSTM...
PACKAGE = "captioning"


@runtime_checkable
class StepDecoder(Protocol):
    """One word at a time over a trained decoder's layers, for a batch of images.

    - `start(inputs)` -> (context, states): per-image tensors every step reads (`context`, a tuple) and the initial
      states (a list); `inputs` is what the decoder reads (feature vectors, or ImageInputs when it reads the maps).
    - `step(tokens, states, context, with_attention=False)` -> (log-probabilities (rows, vocab), new states), plus
      the attention weights (rows, positions) or None when `with_attention`.
    - `step_top(tokens, states, context, k, with_attention=False)` -> the k best next words' log-probabilities and
      ids as NumPy arrays (rows, k), best first, the new states, plus the attention weights when asked: only these
      leave the graph.
    - `graph_step(tokens, states, context)` -> (log-probabilities, new states) as TensorFlow ops, for a caller's own
      graph function (SCST samples through it).
    - optionally `graph_start(features, maps)` -> (context, states) as TensorFlow ops on the feature vectors and the
      maps (rows, positions, channels; None for a decoder that reads no maps): what `start` computes, for a caller's
      own graph function. A family that offers it can be exported for inference without TensorFlow
      (captioning.inference), which converts graph_start and `step` with the weights.
    - `training_inputs(inputs, owner, tokens)`: the Keras model's inputs for captions `tokens` of images `inputs`
      (caption i is of image owner[i]).
    - attributes: `has_attention` (its steps give attention weights), `start_id`, `end_id`, `banned` (added to every
      step's logits), `context_count` and `state_count` (the lengths of context and states), `signature` (None, or
      {"states": [TensorSpec...], "context": (TensorSpec...)} when its steps have fixed signatures) and
      `training_signature` (TensorSpecs of training_inputs).
    """

    has_attention: bool
    start_id: int
    end_id: int
    banned: tf.Tensor
    context_count: int
    state_count: int
    signature: dict | None
    training_signature: list

    def start(self, inputs) -> tuple[tuple[tf.Tensor, ...], list[tf.Tensor]]: ...

    def step(self, tokens, states, context, with_attention: bool = False): ...

    def step_top(self, tokens, states, context, k: int, with_attention: bool = False): ...

    def graph_step(self, tokens, states, context): ...

    def training_inputs(self, inputs, owner: np.ndarray, tokens: np.ndarray) -> list: ...


def masked_cross_entropy(targets, logits):
    """Mean cross-entropy over real tokens (target id 0 is padding)."""
    mask = tf.cast(tf.not_equal(targets, 0), logits.dtype)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(targets, tf.int32), logits=logits)
    return tf.reduce_sum(losses * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SmoothedCrossEntropy(keras.losses.Loss):
    """masked_cross_entropy with label smoothing: each real token's loss is (1 - e) x its cross-entropy plus e x the
    mean over the vocabulary of -log p (a uniform target's share), so the decoder is not pushed to certainty."""

    def __init__(self, label_smoothing: float, name: str = "smoothed_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, targets, logits):
        mask = tf.cast(tf.not_equal(targets, 0), logits.dtype)
        logp = tf.nn.log_softmax(logits)
        picked = -tf.gather(logp, tf.cast(targets, tf.int32), batch_dims=2)
        losses = (1.0 - self.label_smoothing) * picked - self.label_smoothing * tf.reduce_mean(logp, axis=-1)
        return tf.reduce_sum(losses * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def caption_loss(label_smoothing: float = 0.0):
    """The teacher-forcing loss: masked_cross_entropy, smoothed when label_smoothing > 0."""
    return SmoothedCrossEntropy(label_smoothing) if label_smoothing else masked_cross_entropy


def banned_logits(vocab: Vocabulary) -> tf.Tensor:
    """Added to the logits of every decoding step: never generate padding, the start token or <unk>."""
    banned = np.zeros(len(vocab), np.float32)
    banned[[vocab.index[PAD], vocab.index[START], vocab.index[UNK]]] = -np.inf
    return tf.constant(banned)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Gather(keras.layers.Layer):
    """Rows of per-image tensors for each caption: inputs [per_image (images, ...), owner (captions,)]."""

    def call(self, inputs):
        values, owner = inputs
        return tf.gather(values, tf.cast(owner, tf.int32))

    def compute_output_shape(self, input_shapes):
        values, owner = input_shapes
        return (owner[0], *values[1:])


def maps_tensor(maps) -> tf.Tensor:
    """The maps (a MapView, read now, or an array) as a float32 tensor (images, positions, channels)."""
    maps = maps.read() if hasattr(maps, "read") else np.asarray(maps)
    return host_tensor(maps.reshape(len(maps), -1, maps.shape[-1]))
