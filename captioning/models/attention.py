"""The attention decoder (`decoder: attention`): Show-Attend-Tell soft attention over the encoder's spatial map.

Per image, once (however many captions it has in the batch):
    map (P positions x C) -> dropout -> dense (units, relu) = annotations a_i; keys = dense(a_i) (attention_units)
    feature vector (the pooled map, plus any colour part) -> dropout -> dense (tanh) x 2 = initial h, c
Per word t, in one recurrent layer (AttentionLSTM):
    alpha_t = softmax(v . tanh(keys + W h_{t-1}))            where to look
    z_t = sigmoid(w . h_{t-1}) * sum_i alpha_ti a_i           what is seen, gated
    h_t, c_t = LSTM([embedding(y_{t-1}), z_t], h_{t-1}, c_t-1)
    logits_t = dense(dropout(embedding(y_{t-1}) + dense(h_t) + dense(z_t)))   the deep output
The loss is the masked cross-entropy plus `attention_penalty` x the doubly stochastic regulariser
sum_i (tau - sum_t alpha_ti)^2, mean over captions, where tau = caption length / P: every position should get its
share of attention over the caption. (Show-Attend-Tell's target is 1; since sum_i alpha_ti = 1 at every step, the
two differ by a constant and have the same gradients; this one is 0 at its optimum, so the logged loss stays
readable.)

Inputs: the maps (images, P, C), the feature vectors (images, D), each caption's image row (`owner`, captions) and
the caption ids (captions, T); the per-image projections are gathered to the captions after they are computed.
Everything outside the recurrence (the embedding's share of the LSTM's gates, the deep output, the logits) is
computed for all steps at once, so that the loop holds only what depends on h_{t-1}.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from captioning.config import Config
from captioning.core.graph import graph_function
from captioning.data.text import END, SPECIALS, Vocabulary
from captioning.models.base import PACKAGE, Gather, banned_logits, maps_tensor

END_ID = SPECIALS.index(END)  # every Vocabulary's id of the end token


@keras.saving.register_keras_serializable(package=PACKAGE)
class AttentionLSTM(keras.layers.Layer):
    """The recurrence: inputs [embedded words (B, T, E), annotations (B, P, F), keys (B, P, A), h0, c0 (B, U),
    token ids (B, T)]; outputs h (B, T, U), z (B, T, F) and alpha (B, T, P). Adds the attention penalty as a loss."""

    def __init__(self, units: int, attention_units: int, penalty: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.units, self.attention_units, self.penalty = units, attention_units, penalty

    def build(self, input_shapes):
        words, annotations = input_shapes[0], input_shapes[1]
        u, a = self.units, self.attention_units
        self.kernel = self.add_weight(name="kernel", shape=(words[-1], 4 * u), initializer="glorot_uniform")
        self.context_kernel = self.add_weight(name="context_kernel", shape=(annotations[-1], 4 * u),
                                              initializer="glorot_uniform")
        # h_{t-1} -> [the LSTM's recurrent gates | the attention query | the gate scalar], one matmul per step.
        self.recurrent_kernel = self.add_weight(name="recurrent_kernel", shape=(u, 4 * u + a + 1),
                                                initializer="orthogonal")
        forget = np.zeros(4 * u, np.float32)
        forget[u:2 * u] = 1.0  # forget-gate bias 1, as Keras' LSTM
        self.bias = self.add_weight(name="bias", shape=(4 * u,), initializer=keras.initializers.Constant(forget))
        self.query_bias = self.add_weight(name="query_bias", shape=(a,), initializer="zeros")
        self.gate_bias = self.add_weight(name="gate_bias", shape=(1,), initializer="zeros")
        self.score = self.add_weight(name="score", shape=(a, 1), initializer="glorot_uniform")

    def get_config(self):
        return {**super().get_config(), "units": self.units, "attention_units": self.attention_units,
                "penalty": self.penalty}

    def compute_output_shape(self, input_shapes):
        words, annotations = input_shapes[0], input_shapes[1]
        batch, steps = words[0], words[1]
        return (batch, steps, self.units), (batch, steps, annotations[-1]), (batch, steps, annotations[1])

    # One step, shared by training (inside the loop) and decoding.
    def step(self, word_gates, h, c, annotations, keys):
        """word_gates: the embedded word's share of the gates (B, 4U) with the bias. Returns h, c, z, alpha."""
        u, a = self.units, self.attention_units
        recurrent = tf.matmul(h, self.recurrent_kernel)
        query = recurrent[:, 4 * u:4 * u + a] + self.query_bias
        gate = tf.sigmoid(recurrent[:, 4 * u + a:] + self.gate_bias)
        scores = tf.squeeze(tf.tensordot(tf.tanh(keys + query[:, None, :]), self.score, axes=1), -1)  # (B, P)
        alpha = tf.nn.softmax(scores)
        z = gate * tf.einsum("bp,bpf->bf", alpha, annotations)
        gates = word_gates + recurrent[:, :4 * u] + tf.matmul(z, self.context_kernel)
        i, f, g, o = tf.split(gates, 4, axis=1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        return h, c, z, alpha

    def word_gates(self, words):
        return tf.tensordot(words, self.kernel, axes=1) + self.bias

    def call(self, inputs):
        words, annotations, keys, h0, c0, tokens = inputs
        gates = tf.transpose(self.word_gates(words), (1, 0, 2))  # (T, B, 4U), time major for the loop
        steps = tf.shape(gates)[0]
        positions = tf.shape(keys)[1]
        outputs = [tf.TensorArray(tf.float32, size=steps) for _ in range(3)]

        def body(t, h, c, hs, zs, alphas):
            h, c, z, alpha = self.step(gates[t], h, c, annotations, keys)
            return t + 1, h, c, hs.write(t, h), zs.write(t, z), alphas.write(t, alpha)

        _, _, _, hs, zs, alphas = tf.while_loop(lambda t, *_: t < steps, body, (0, h0, c0, *outputs))
        hs = tf.transpose(hs.stack(), (1, 0, 2))
        zs = tf.transpose(zs.stack(), (1, 0, 2))
        alphas = tf.transpose(alphas.stack(), (1, 0, 2))
        hs.set_shape((None, None, self.units))
        zs.set_shape((None, None, annotations.shape[-1]))
        alphas.set_shape((None, None, keys.shape[1]))
        if self.penalty:
            # The steps that predict a word or the end token: input neither padding nor the end token (which a
            # caption shorter than its batch's longest has as input before its padding targets).
            mask = tf.cast((tokens != 0) & (tokens != END_ID), tf.float32)  # (B, T)
            seen = tf.reduce_sum(alphas * mask[:, :, None], axis=1)  # (B, P)
            tau = tf.reduce_sum(mask, axis=1, keepdims=True) / tf.cast(positions, tf.float32)
            self.add_loss(self.penalty * tf.reduce_mean(tf.reduce_sum(tf.square(tau - seen), axis=1)))
        return hs, zs, alphas


def build_model(config: Config, vocab_size: int, inputs) -> keras.Model:
    """The attention decoder for `inputs` (ImageInputs: the feature vectors and the maps)."""
    return build_attention_decoder(config, vocab_size, *inputs.shape[1:])


def build_attention_decoder(config: Config, vocab_size: int, feature_dim: int, positions: int,
                            channels: int) -> keras.Model:
    maps = keras.Input((positions, channels), name="maps")
    features = keras.Input((feature_dim,), name="features")
    owner = keras.Input((), dtype="int32", name="owner")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    annotations = keras.layers.Dropout(config.dropout, name="map_dropout")(maps)
    annotations = keras.layers.Dense(config.units, activation="relu", name="annotations")(annotations)
    keys = keras.layers.Dense(config.attention_units, use_bias=False, name="keys")(annotations)
    image = keras.layers.Dropout(config.dropout, name="image_dropout")(features)
    h0 = keras.layers.Dense(config.units, activation="tanh", name="init_h")(image)
    c0 = keras.layers.Dense(config.units, activation="tanh", name="init_c")(image)
    gather = Gather(name="gather")
    annotations, keys, h0, c0 = (gather([x, owner]) for x in (annotations, keys, h0, c0))
    embedded = keras.layers.Embedding(vocab_size, config.embedding_size, name="embedding")(tokens)
    words = keras.layers.Dropout(config.dropout, name="text_dropout")(embedded)
    hs, zs, _ = AttentionLSTM(config.units, config.attention_units, config.attention_penalty,
                              name="attention_lstm")([words, annotations, keys, h0, c0, tokens])
    deep = keras.layers.Add(name="deep")([embedded, keras.layers.Dense(config.embedding_size, name="out_h")(hs),
                                          keras.layers.Dense(config.embedding_size, name="out_z")(zs)])
    deep = keras.layers.Dropout(config.dropout, name="out_dropout")(deep)
    logits = keras.layers.Dense(vocab_size, name="logits")(deep)
    return keras.Model([maps, features, owner, tokens], logits, name="attention_decoder")


class AttentionStepDecoder:
    """The attention decoder's layers one word at a time, for a batch of images (the StepDecoder protocol of
    captioning.models.base): `start` computes each image's annotations, keys and initial state once."""

    has_attention = True
    context_count, state_count = 2, 2  # (annotations, keys); [h, c]

    def __init__(self, model: keras.Model, vocab: Vocabulary):
        self.model = model
        layer = model.get_layer
        self.annotations, self.keys = layer("annotations"), layer("keys")
        self.init_h, self.init_c = layer("init_h"), layer("init_c")
        self.embedding, self.cell = layer("embedding"), layer("attention_lstm")
        self.out_h, self.out_z, self.logits = layer("out_h"), layer("out_z"), layer("logits")
        self.units = self.cell.units
        self.banned = banned_logits(vocab)
        self.start_id, self.end_id = vocab.start_id, vocab.end_id
        # Fixed signatures: one trace each, whatever the batch, the number of live rows or the map size.
        spec = lambda *shape, dtype=tf.float32: tf.TensorSpec(shape, dtype)
        dim, channels = self.init_h.kernel.shape[0], self.annotations.kernel.shape[0]
        states = [spec(None, self.units)] * 2
        context = (spec(None, None, self.annotations.units), spec(None, None, self.keys.units))
        self.signature = {"states": states, "context": context}
        self._start = graph_function(self._start_impl, input_signature=[spec(None, dim), spec(None, None, channels)])
        self._step = graph_function(self._step_impl, input_signature=[spec(None, dtype=tf.int32), states, context])
        self._top = graph_function(self._top_impl, input_signature=[spec(None, dtype=tf.int32), states, context,
                                                                   spec(dtype=tf.int32)])
        self.training_signature = [spec(None, None, channels), spec(None, dim), spec(None, dtype=tf.int32),
                                   spec(None, None, dtype=tf.int32)]

    # The decoder's inputs: ImageInputs (feature vectors and maps).
    def start(self, inputs) -> tuple[tuple[tf.Tensor, ...], list[tf.Tensor]]:
        """Per-image context (annotations, keys) and the initial states [h, c]."""
        annotations, keys, h, c = self._start(tf.convert_to_tensor(inputs.features, tf.float32),
                                              maps_tensor(inputs.maps))
        return (annotations, keys), [h, c]

    def _start_impl(self, features, maps):
        annotations = self.annotations(maps)
        return annotations, self.keys(annotations), self.init_h(features), self.init_c(features)

    def graph_start(self, features, maps):
        """`start` as TensorFlow ops on the feature vectors and maps (rows, P, C), for a caller's graph function
        (captioning.inference converts it)."""
        annotations, keys, h, c = self._start_impl(features, maps)
        return (annotations, keys), [h, c]

    def _step_impl(self, tokens, states, context):
        annotations, keys = context
        embedded = self.embedding(tokens)
        h, c, z, alpha = self.cell.step(self.cell.word_gates(embedded), states[0], states[1], annotations, keys)
        logits = self.logits(embedded + self.out_h(h) + self.out_z(z))
        return tf.nn.log_softmax(logits + self.banned), [h, c], alpha

    def _top_impl(self, tokens, states, context, k):
        logp, new_states, alpha = self._step_impl(tokens, states, context)
        values, ids = tf.math.top_k(logp, k)
        return values, ids, new_states, alpha

    def graph_step(self, tokens, states, context):
        logp, new_states, _ = self._step_impl(tokens, states, context)
        return logp, new_states

    def step(self, tokens, states, context, with_attention: bool = False):
        logp, states, alpha = self._step(tf.convert_to_tensor(tokens, tf.int32), states, context)
        return (logp, list(states), alpha) if with_attention else (logp, list(states))

    def step_top(self, tokens, states, context, k: int, with_attention: bool = False):
        values, ids, new_states, alpha = self._top(tf.convert_to_tensor(tokens, tf.int32), states, context,
                                                   tf.constant(k, tf.int32))
        out = (values.numpy(), ids.numpy(), new_states)
        return (*out, alpha.numpy()) if with_attention else out

    def training_inputs(self, inputs, owner: np.ndarray, tokens: np.ndarray) -> list:
        """The model's inputs for captions `tokens` of the images `inputs` (caption i is of image owner[i])."""
        return [maps_tensor(inputs.maps), tf.constant(inputs.features, tf.float32), tf.constant(owner, tf.int32),
                tf.constant(tokens, tf.int32)]

