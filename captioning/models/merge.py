"""The seed's merge decoder, built for teacher forcing, plus a one-word-at-a-time view of the same layers.

image features -> dropout -> dense ---------------------------+
caption ids -> embedding -> dropout -> LSTM (every step) -----+-> add -> dense -> vocabulary logits

Training feeds whole captions with the LSTM returning every step, so one pass computes the seed's objective
(every prefix predicts its next word). Padding is on the right and the loss masks it; earlier steps never see the
padding, so the LSTM needs no mask (which would cost speed on CPU).
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from captioning.config import Config
from captioning.core.graph import graph_function
from captioning.data.text import Vocabulary
from captioning.models.base import banned_logits


def build_model(config: Config, vocab_size: int, inputs) -> keras.Model:
    """The merge decoder for `inputs` (the images' feature vectors, (images, dim))."""
    return build_decoder(config, vocab_size, inputs.shape[1])


def build_decoder(config: Config, vocab_size: int, feature_dim: int) -> keras.Model:
    features = keras.Input((feature_dim,), name="features")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    image = keras.layers.Dropout(config.dropout, name="image_dropout")(features)
    image = keras.layers.Dense(config.units, activation="relu", name="image_dense")(image)
    image = keras.layers.Reshape((1, config.units), name="image_step")(image)  # broadcast over time steps
    text = keras.layers.Embedding(vocab_size, config.embedding_size, name="embedding")(tokens)
    text = keras.layers.Dropout(config.dropout, name="text_dropout")(text)
    for layer in range(config.lstm_layers):
        text = keras.layers.LSTM(config.units, return_sequences=True, name=f"lstm_{layer}")(text)
    merged = keras.layers.Add(name="merge")([image, text])
    hidden = keras.layers.Dense(config.units, activation="relu", name="merge_dense")(merged)
    logits = keras.layers.Dense(vocab_size, name="logits")(hidden)
    return keras.Model([features, tokens], logits, name="merge_decoder")


class MergeStepDecoder:
    """The merge decoder's layers one word at a time, carrying the LSTM states, for a whole batch of images at once
    (the StepDecoder protocol of captioning.models.base)."""

    has_attention = False
    context_count = 1  # the projected image vector

    def __init__(self, model: keras.Model, vocab: Vocabulary):
        self.image_dense = model.get_layer("image_dense")
        self.embedding = model.get_layer("embedding")
        self.cells = []
        index = 0
        while any(layer.name == f"lstm_{index}" for layer in model.layers):
            self.cells.append(model.get_layer(f"lstm_{index}").cell)
            index += 1
        self.units = self.cells[0].units
        self.state_count = 2 * len(self.cells)  # h and c per layer
        self.merge_dense = model.get_layer("merge_dense")
        self.logits = model.get_layer("logits")
        self.banned = banned_logits(vocab)
        self.start_id, self.end_id = vocab.start_id, vocab.end_id
        self._step = graph_function(self.graph_step, reduce_retracing=True)
        self._top = graph_function(self._top_impl, reduce_retracing=True)
        self._image = graph_function(lambda f: self.image_dense(f, training=False), reduce_retracing=True)
        self.training_signature = [tf.TensorSpec((None, self.image_dense.kernel.shape[0]), tf.float32),
                                   tf.TensorSpec((None, None), tf.int32)]
        self.signature = None  # (the merge decoder's steps trace per shape pattern, see reduce_retracing)

    def start(self, features: np.ndarray) -> tuple[tuple[tf.Tensor, ...], list[tf.Tensor]]:
        """The images' projected vectors (the context every step adds) and zero initial states."""
        zeros = tf.zeros((len(features), self.units))
        return (self._image(tf.convert_to_tensor(features, tf.float32)),), [zeros] * self.state_count

    def graph_start(self, features, maps=None):
        """`start` as TensorFlow ops on the feature vectors (the maps are not read), for a caller's graph function
        (captioning.inference converts it)."""
        zeros = tf.zeros(tf.stack([tf.shape(features)[0], self.units]))
        return (self.image_dense(features, training=False),), [zeros] * self.state_count

    def graph_step(self, tokens, states, context):
        image_vectors, = context
        x = self.embedding(tokens)
        new_states = []
        for layer, cell in enumerate(self.cells):
            x, (h, c) = cell(x, [states[2 * layer], states[2 * layer + 1]], training=False)
            new_states += [h, c]
        logits = self.logits(self.merge_dense(image_vectors + x))
        return tf.nn.log_softmax(logits + self.banned), new_states

    def _top_impl(self, tokens, states, context, k):
        logp, new_states = self.graph_step(tokens, states, context)
        values, ids = tf.math.top_k(logp, k)
        return values, ids, new_states

    def step(self, tokens: np.ndarray, states: list[tf.Tensor], context: tuple[tf.Tensor, ...],
             with_attention: bool = False):
        """Log-probabilities of the next word (batch, vocab) and the new states (and None: no attention)."""
        logp, new_states = self._step(tf.convert_to_tensor(tokens, tf.int32), states, context)
        return (logp, new_states, None) if with_attention else (logp, new_states)

    def step_top(self, tokens: np.ndarray, states: list[tf.Tensor], context: tuple[tf.Tensor, ...], k: int,
                 with_attention: bool = False):
        """The k most likely next words: log-probabilities (batch, k) and ids (batch, k), best first, and the new
        states. Only these leave the graph, not the whole (batch, vocab) matrix. (No attention weights: None.)"""
        values, ids, new_states = self._top(tf.convert_to_tensor(tokens, tf.int32), states, context,
                                            tf.constant(k, tf.int32))  # (a tensor: one trace for every k)
        out = (values.numpy(), ids.numpy(), new_states)
        return (*out, None) if with_attention else out

    def training_inputs(self, features: np.ndarray, owner: np.ndarray, tokens: np.ndarray) -> list:
        """The model's inputs for captions `tokens` of the images `features` (caption i is of image owner[i])."""
        return [tf.constant(np.asarray(features, np.float32)[owner]), tf.constant(tokens, tf.int32)]
