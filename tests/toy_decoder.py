"""A decoder family of one file, as a researcher would add one: a GRU whose initial state is the projected image
vector. Importing this module registers it as `decoder: toy`; training, greedy and beam search, ensembles, saving
and loading bundles and the search then work with it unchanged."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from captioning.core.graph import graph_function
from captioning.models import DecoderSpec, register_decoder
from captioning.models.base import banned_logits


def build_model(config, vocab_size: int, inputs) -> keras.Model:
    """Teacher forcing: [feature vectors (captions, dim), input ids (captions, T)] -> logits (captions, T, vocab)."""
    features = keras.Input((inputs.shape[1],), name="features")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    state = keras.layers.Dense(config.units, activation="tanh", name="init_state")(features)
    words = keras.layers.Embedding(vocab_size, config.embedding_size, name="embedding")(tokens)
    hidden = keras.layers.GRU(config.units, return_sequences=True, name="gru")(words, initial_state=state)
    logits = keras.layers.Dense(vocab_size, name="logits")(hidden)
    return keras.Model([features, tokens], logits, name="toy_decoder")


class ToyStepDecoder:
    """The StepDecoder protocol over the toy model's layers: one GRU state per caption."""

    has_attention = False
    context_count, state_count = 0, 1
    signature = None

    def __init__(self, model: keras.Model, vocab):
        self.init_state, self.embedding = model.get_layer("init_state"), model.get_layer("embedding")
        self.cell, self.logits = model.get_layer("gru").cell, model.get_layer("logits")
        self.banned = banned_logits(vocab)
        self.start_id, self.end_id = vocab.start_id, vocab.end_id
        self.training_signature = [tf.TensorSpec((None, self.init_state.kernel.shape[0]), tf.float32),
                                   tf.TensorSpec((None, None), tf.int32)]
        self._step = graph_function(self.graph_step, reduce_retracing=True)

    def start(self, features):
        return (), [self.init_state(tf.convert_to_tensor(features, tf.float32))]

    def graph_step(self, tokens, states, context):
        h, _ = self.cell(self.embedding(tokens), [states[0]], training=False)
        return tf.nn.log_softmax(self.logits(h) + self.banned), [h]

    def step(self, tokens, states, context, with_attention: bool = False):
        logp, new_states = self._step(tf.convert_to_tensor(tokens, tf.int32), states, context)
        return (logp, new_states, None) if with_attention else (logp, new_states)

    def step_top(self, tokens, states, context, k: int, with_attention: bool = False):
        logp, new_states = self.step(tokens, states, context)
        values, ids = tf.math.top_k(logp, k)
        out = (values.numpy(), ids.numpy(), new_states)
        return (*out, None) if with_attention else out

    def training_inputs(self, features, owner, tokens) -> list:
        return [tf.constant(np.asarray(features, np.float32)[owner]), tf.constant(tokens, tf.int32)]


SPEC = register_decoder(DecoderSpec(name="toy", model_name="toy_decoder", build=build_model,
                                    step_decoder=ToyStepDecoder, keys=("units", "embedding_size"),
                                    description="a GRU started from the image vector (a test's example)"))
