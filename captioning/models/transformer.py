"""The transformer decoder (`decoder: transformer`): pre-layer-norm blocks of masked self-attention over the words so
far, cross-attention over the image, and a feed-forward layer.

The image's memory, per image, once (however many captions it has in the batch):
    map (P cells x C) -> dropout -> dense (d) + a learned embedding per cell      P tokens
    feature vector (the pooled map, plus any colour part) -> dropout -> dense (d)  one more token
    -> layer norm -> one dense layer giving every block's cross-attention keys and values (P + 1, 2 d per block)
Per caption, all positions at once (teacher forcing) or one word at a time (decoding):
    x = embedding(y) + a learned embedding of the position, dropout
    per block: x += drop(self_attention(ln(x)));  x += drop(cross_attention(ln(x), memory));  x += drop(ffn(ln(x)))
    logits = dense(ln(x))
d is `embedding_size`, split over `transformer_heads` heads; `transformer_layers` blocks; the feed-forward layer has
`transformer_ff` units (ReLU).

Decoding steps the blocks incrementally: every block's self-attention keys and values are cached in a buffer of
`max_length` positions per caption, written at the caption's own position, so a step costs one word's products and
the states keep a fixed per-row shape (the searches gather, scatter and reorder rows without knowing what they hold).
The attention weights the app and the report draw are the last block's cross-attention over the P map cells,
averaged over the heads (the pooled token's share is left out, so a row sums to at most 1).

One `TransformerStack` layer holds all blocks' weights and both ways through them, so that teacher forcing and the
cached step compute the same function by construction (tests/test_transformer.py checks the cached captions against
a decoder that re-runs the whole prefix).
"""
from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from captioning.config import Config
from captioning.core.graph import graph_function
from captioning.data.text import Vocabulary
from captioning.models.base import PACKAGE, banned_logits, maps_tensor

EPSILON = 1e-5  # layer norm


@keras.saving.register_keras_serializable(package=PACKAGE)
class Positions(keras.layers.Layer):
    """Adds a learned embedding per position to (B, N, d): the map's cells, or the caption's words (the first N of
    `count`)."""

    def __init__(self, count: int, **kwargs):
        super().__init__(**kwargs)
        self.count = count

    def build(self, input_shape):
        self.embeddings = self.add_weight(name="embeddings", shape=(self.count, input_shape[-1]),
                                          initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, x):
        return x + self.embeddings[:tf.shape(x)[1]]

    def at(self, positions):
        """The embeddings of positions (R,) int32: (R, d)."""
        return tf.gather(self.embeddings, positions)

    def get_config(self):
        return {**super().get_config(), "count": self.count}


@keras.saving.register_keras_serializable(package=PACKAGE)
class TransformerStack(keras.layers.Layer):
    """The decoder blocks and the final layer norm. Teacher forcing: inputs [x (B, T, d), memory keys and values
    (images, M, layers * 2d), owner (B,): caption i's image] -> (hidden (B, T, d), the last block's cross-attention
    over M, mean of heads (B, T, M)). Without owner (the graph of bundles saved before 2026-12-08), memory is per
    caption (B, M, layers * 2d).

    Cross-attention runs per image: each image's captions' queries are scattered into one padded block (images,
    captions * T), so that the memory is never copied per caption. Copying it (and, backwards, summing its
    gradients back per image) cost 58 % of a teacher-forced step at the base sizes, for products of a few MFLOPs."""

    def __init__(self, layers: int, heads: int, ff: int, dropout: float, max_length: int, **kwargs):
        super().__init__(**kwargs)
        self.layers, self.heads, self.ff, self.dropout, self.max_length = layers, heads, ff, dropout, max_length
        self.drop = keras.layers.Dropout(dropout)

    def get_config(self):
        return {**super().get_config(), "layers": self.layers, "heads": self.heads, "ff": self.ff,
                "dropout": self.dropout, "max_length": self.max_length}

    def build(self, input_shapes):
        d = input_shapes[0][-1]
        self.d, self.head_size = d, d // self.heads
        ones, zeros = keras.initializers.Ones(), keras.initializers.Zeros()
        # Residual branches' output kernels scaled down with depth (GPT-2's init), so that the sum starts near x.
        out_init = keras.initializers.RandomNormal(stddev=0.02 / math.sqrt(2 * self.layers))
        weight = lambda name, shape, init="glorot_uniform": self.add_weight(name=name, shape=shape, initializer=init)
        self.blocks = []
        for i in range(self.layers):
            self.blocks.append({
                "ln1_g": weight(f"b{i}_ln1_gamma", (d,), ones), "ln1_b": weight(f"b{i}_ln1_beta", (d,), zeros),
                "qkv": weight(f"b{i}_qkv", (d, 3 * d)), "qkv_b": weight(f"b{i}_qkv_bias", (3 * d,), zeros),
                "o": weight(f"b{i}_out", (d, d), out_init), "o_b": weight(f"b{i}_out_bias", (d,), zeros),
                "ln2_g": weight(f"b{i}_ln2_gamma", (d,), ones), "ln2_b": weight(f"b{i}_ln2_beta", (d,), zeros),
                "cq": weight(f"b{i}_cross_q", (d, d)), "cq_b": weight(f"b{i}_cross_q_bias", (d,), zeros),
                "co": weight(f"b{i}_cross_out", (d, d), out_init), "co_b": weight(f"b{i}_cross_out_bias", (d,), zeros),
                "ln3_g": weight(f"b{i}_ln3_gamma", (d,), ones), "ln3_b": weight(f"b{i}_ln3_beta", (d,), zeros),
                "f1": weight(f"b{i}_ff1", (d, self.ff)), "f1_b": weight(f"b{i}_ff1_bias", (self.ff,), zeros),
                "f2": weight(f"b{i}_ff2", (self.ff, d), out_init), "f2_b": weight(f"b{i}_ff2_bias", (d,), zeros)})
        self.final_g, self.final_b = weight("final_gamma", (d,), ones), weight("final_beta", (d,), zeros)

    def compute_output_shape(self, input_shapes):
        x, memory, *_ = input_shapes
        return x, (x[0], x[1], memory[1])

    # Shared pieces. Shapes: B rows (captions), T positions, M memory tokens, H heads, k head size.
    @staticmethod
    def _norm(x, gamma, beta):
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(variance + EPSILON) * gamma + beta

    def _heads(self, x):
        """(..., d) -> (..., H, k)."""
        return tf.reshape(x, tf.concat([tf.shape(x)[:-1], [self.heads, self.head_size]], 0))

    def _merge(self, x):
        """(..., H, k) -> (..., d)."""
        return tf.reshape(x, tf.concat([tf.shape(x)[:-2], [self.d]], 0))

    def _memory(self, memory, i):
        """Block i's cross-attention keys and values (B, M, H, k) each."""
        kv = memory[..., 2 * self.d * i:2 * self.d * (i + 1)]
        return self._heads(kv[..., :self.d]), self._heads(kv[..., self.d:])

    @staticmethod
    def _slots(owner):
        """(B, 2) [image, slot]: caption i is its image's slot-th caption (in batch order), and the most captions any
        image has."""
        owner = tf.cast(owner, tf.int32)
        images = tf.reduce_max(tf.concat([owner, [-1]], 0)) + 1  # (0 for no captions)
        seen = tf.cumsum(tf.one_hot(owner, images, dtype=tf.int32), axis=0)  # (B, images)
        slot = tf.gather(seen, owner, batch_dims=1) - 1
        return tf.stack([owner, slot], axis=1), tf.reduce_max(tf.concat([slot, [-1]], 0)) + 1

    def _cross(self, h, block, keys, values, slots, images, most):
        """Cross-attention of h's queries (B, T, d) over their images' memory (images, M, H, k) each: the block's
        output (B, T, d) and the weights (B, H, T, M)."""
        steps = tf.shape(h)[1]
        q = self._heads(tf.tensordot(h, block["cq"], 1) + block["cq_b"]) / math.sqrt(self.head_size)
        grouped = tf.scatter_nd(slots, q, [images, most, steps, self.heads, self.head_size])
        grouped = tf.reshape(grouped, [images, most * steps, self.heads, self.head_size])
        weights = tf.nn.softmax(tf.einsum("bthk,bmhk->bhtm", grouped, keys))  # (images, H, most * T, M)
        seen = tf.reshape(tf.einsum("bhtm,bmhk->bthk", weights, values),
                          [images, most, steps, self.heads, self.head_size])
        seen = self._merge(tf.gather_nd(seen, slots))  # (B, T, d)
        weights = tf.gather_nd(tf.reshape(tf.transpose(weights, (0, 2, 1, 3)),
                                          [images, most, steps, self.heads, -1]), slots)  # (B, T, H, M)
        return tf.tensordot(seen, block["co"], 1) + block["co_b"], tf.transpose(weights, (0, 2, 1, 3))

    def _feed_forward(self, h, block):
        return tf.tensordot(tf.nn.relu(tf.tensordot(h, block["f1"], 1) + block["f1_b"]), block["f2"], 1) + block["f2_b"]

    # Teacher forcing: every position at once, each seeing the words up to its own.
    def call(self, inputs, training=None):
        x, memory, *owner = inputs
        # (without owner, each caption has its own memory: as many images as captions, one caption each)
        slots, most = self._slots(owner[0] if owner else tf.range(tf.shape(x)[0]))
        images = tf.shape(memory)[0]
        steps = tf.shape(x)[1]
        causal = tf.linalg.band_part(tf.ones((steps, steps)), -1, 0)  # (T, T): 1 where the key is not later
        bias = (1.0 - causal) * -1e9
        weights = None
        for i, block in enumerate(self.blocks):
            h = self._norm(x, block["ln1_g"], block["ln1_b"])
            qkv = tf.tensordot(h, block["qkv"], 1) + block["qkv_b"]
            q, k, v = (self._heads(part) for part in tf.split(qkv, 3, axis=-1))  # (B, T, H, k)
            scores = tf.einsum("bthk,bshk->bhts", q / math.sqrt(self.head_size), k) + bias
            context = tf.einsum("bhts,bshk->bthk", tf.nn.softmax(scores), v)
            x = x + self.drop(tf.tensordot(self._merge(context), block["o"], 1) + block["o_b"], training=training)
            keys, values = self._memory(memory, i)
            h = self._norm(x, block["ln2_g"], block["ln2_b"])
            seen, weights = self._cross(h, block, keys, values, slots, images, most)
            x = x + self.drop(seen, training=training)
            h = self._norm(x, block["ln3_g"], block["ln3_b"])
            x = x + self.drop(self._feed_forward(h, block), training=training)
        return self._norm(x, self.final_g, self.final_b), tf.reduce_mean(weights, axis=1)

    # Decoding: one word per row, at the row's own position, with the cached keys and values of the words before.
    # Every tensor a step reads is laid out (rows, heads, positions, head size), so that its products are batched
    # matmuls over whole tensors: no slice, concatenation or transposition copies the memory or the cache per step.
    def memory_heads(self, memory):
        """The memory's keys and values (rows, M, layers * 2d) as [keys, values] per block, (rows, H, M, k) each."""
        rows, positions = tf.shape(memory)[0], tf.shape(memory)[1]
        split = tf.reshape(memory, [rows, positions, self.layers * 2, self.heads, self.head_size])
        return tf.unstack(tf.transpose(split, (2, 0, 3, 1, 4)), num=self.layers * 2)

    def step(self, x, caches, positions, memory):
        """x (R, d): the embedded words (positions added); caches: [keys, values] per block (R, H, max_length, k);
        positions (R,) int32; memory: [keys, values] per block (R, H, M, k). Returns hidden (R, d), the new caches,
        and the last block's cross-attention (R, M), mean of heads."""
        rows = tf.shape(x)[0]
        write = tf.one_hot(positions, self.max_length)[:, None, :, None]  # (R, 1, L, 1)
        visible = tf.sequence_mask(positions + 1, self.max_length, dtype=tf.float32)  # (R, L)
        bias = (1.0 - visible)[:, None, None, :] * -1e9  # (R, 1, 1, L)
        scale = 1.0 / math.sqrt(self.head_size)
        as_heads = lambda t: tf.reshape(t, [rows, self.heads, 1, self.head_size])  # (R, d) -> (R, H, 1, k)
        merged = lambda t: tf.reshape(t, [rows, self.d])
        new_caches, weights = [], None
        for i, block in enumerate(self.blocks):
            h = self._norm(x, block["ln1_g"], block["ln1_b"])
            q, k, v = tf.split(tf.matmul(h, block["qkv"]) + block["qkv_b"], 3, axis=-1)
            keys = caches[2 * i] * (1.0 - write) + as_heads(k) * write  # (R, H, L, k)
            values = caches[2 * i + 1] * (1.0 - write) + as_heads(v) * write
            new_caches += [keys, values]
            scores = tf.matmul(as_heads(q) * scale, keys, transpose_b=True) + bias  # (R, H, 1, L)
            context = tf.matmul(tf.nn.softmax(scores), values)
            x = x + tf.matmul(merged(context), block["o"]) + block["o_b"]
            h = self._norm(x, block["ln2_g"], block["ln2_b"])
            q = as_heads(tf.matmul(h, block["cq"]) + block["cq_b"]) * scale
            weights = tf.nn.softmax(tf.matmul(q, memory[2 * i], transpose_b=True))  # (R, H, 1, M)
            context = tf.matmul(weights, memory[2 * i + 1])
            x = x + tf.matmul(merged(context), block["co"]) + block["co_b"]
            h = self._norm(x, block["ln3_g"], block["ln3_b"])
            x = x + self._feed_forward(h, block)
        return self._norm(x, self.final_g, self.final_b), new_caches, tf.reduce_mean(weights[:, :, 0], axis=1)


def build_model(config: Config, vocab_size: int, inputs) -> keras.Model:
    """The transformer decoder for `inputs` (ImageInputs: the feature vectors and the maps)."""
    return build_transformer_decoder(config, vocab_size, *inputs.shape[1:])


def build_transformer_decoder(config: Config, vocab_size: int, feature_dim: int, positions: int,
                              channels: int) -> keras.Model:
    d, layers = config.embedding_size, config.transformer_layers
    maps = keras.Input((positions, channels), name="maps")
    features = keras.Input((feature_dim,), name="features")
    owner = keras.Input((), dtype="int32", name="owner")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    cells = keras.layers.Dense(d, name="memory_cells")(keras.layers.Dropout(config.dropout, name="map_dropout")(maps))
    cells = Positions(positions, name="cell_positions")(cells)
    pooled = keras.layers.Dense(d, name="memory_pooled")(
        keras.layers.Dropout(config.dropout, name="image_dropout")(features))
    pooled = keras.layers.Reshape((1, d), name="pooled_token")(pooled)
    memory = keras.layers.Concatenate(axis=1, name="memory")([cells, pooled])
    memory = keras.layers.LayerNormalization(epsilon=EPSILON, name="memory_norm")(memory)
    memory = keras.layers.Dense(2 * d * layers, name="memory_kv")(memory)  # per image
    words = keras.layers.Embedding(vocab_size, d, name="embedding",
                                   embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02))(tokens)
    words = Positions(config.max_length, name="word_positions")(words)
    words = keras.layers.Dropout(config.dropout, name="text_dropout")(words)
    hidden, _ = TransformerStack(layers, config.transformer_heads, config.transformer_ff, config.dropout,
                                 config.max_length, name="transformer")([words, memory, owner])
    logits = keras.layers.Dense(vocab_size, name="logits")(hidden)
    return keras.Model([maps, features, owner, tokens], logits, name="transformer_decoder")


class TransformerStepDecoder:
    """The transformer's layers one word at a time, for a batch of images (the StepDecoder protocol of
    captioning.models.base). Context: the map's cells as ones (rows, P), from which the searches and ensembles read
    the number of map positions, then each block's memory keys and values (rows, heads, P + 1, head size; the pooled
    token last). States: each block's self-attention keys and values cached for max_length positions (rows, heads,
    max_length, head size), then each row's position."""

    has_attention = True

    def __init__(self, model: keras.Model, vocab: Vocabulary):
        self.model = model
        layer = model.get_layer
        self.memory_layers = [layer(name) for name in ("map_dropout", "memory_cells", "cell_positions")]
        self.pooled, self.norm, self.memory_kv = layer("memory_pooled"), layer("memory_norm"), layer("memory_kv")
        self.embedding, self.positions = layer("embedding"), layer("word_positions")
        self.stack, self.logits = layer("transformer"), layer("logits")
        self.banned = banned_logits(vocab)
        self.start_id, self.end_id = vocab.start_id, vocab.end_id
        stack = self.stack
        blocks = 2 * stack.layers
        self.context_count, self.state_count = 1 + blocks, blocks + 1
        self.cache_shape = (stack.heads, stack.max_length, stack.head_size)
        spec = lambda *shape, dtype=tf.float32: tf.TensorSpec(shape, dtype)
        dim, channels = self.pooled.kernel.shape[0], self.memory_layers[1].kernel.shape[0]
        states = [spec(None, *self.cache_shape)] * blocks + [spec(None, dtype=tf.int32)]
        context = (spec(None, None), *[spec(None, stack.heads, None, stack.head_size)] * blocks)
        self.signature = {"states": states, "context": context}
        self._start = graph_function(self.graph_start, input_signature=[spec(None, dim), spec(None, None, channels)])
        self._step = graph_function(self._step_impl, input_signature=[spec(None, dtype=tf.int32), states, context])
        self._top = graph_function(self._top_impl, input_signature=[spec(None, dtype=tf.int32), states, context,
                                                                   spec(dtype=tf.int32)])
        self.training_signature = [spec(None, None, channels), spec(None, dim), spec(None, dtype=tf.int32),
                                   spec(None, None, dtype=tf.int32)]

    def start(self, inputs) -> tuple[tuple[tf.Tensor, ...], list[tf.Tensor]]:
        """Per-image context (the cells, each block's memory keys and values) and empty caches."""
        context, states = self._start(tf.convert_to_tensor(inputs.features, tf.float32), maps_tensor(inputs.maps))
        return tuple(context), list(states)

    def graph_start(self, features, maps):
        """`start` as TensorFlow ops on the feature vectors and maps (rows, P, C), for a caller's graph function."""
        cells = maps
        for layer in self.memory_layers:
            cells = layer(cells)
        memory = tf.concat([cells, self.pooled(features)[:, None, :]], axis=1)
        memory = self.stack.memory_heads(self.memory_kv(self.norm(memory)))
        rows = tf.shape(features)[:1]
        empty = tf.zeros(tf.concat([rows, self.cache_shape], axis=0))
        context = (tf.ones(tf.shape(maps)[:2]), *memory)
        return context, [empty] * (self.state_count - 1) + [tf.zeros(rows, tf.int32)]

    def _step_impl(self, tokens, states, context):
        positions = states[-1]
        x = self.embedding(tokens) + self.positions.at(positions)
        hidden, caches, weights = self.stack.step(x, states[:-1], positions, context[1:])
        logp = tf.nn.log_softmax(self.logits(hidden) + self.banned)
        return logp, [*caches, positions + 1], weights[:, :-1]

    def _top_impl(self, tokens, states, context, k):
        logp, new_states, weights = self._step_impl(tokens, states, context)
        values, ids = tf.math.top_k(logp, k)
        return values, ids, new_states, weights

    def graph_step(self, tokens, states, context):
        logp, new_states, _ = self._step_impl(tokens, states, context)
        return logp, new_states

    def step(self, tokens, states, context, with_attention: bool = False):
        logp, states, weights = self._step(tf.convert_to_tensor(tokens, tf.int32), states, context)
        return (logp, list(states), weights) if with_attention else (logp, list(states))

    def step_top(self, tokens, states, context, k: int, with_attention: bool = False):
        values, ids, new_states, weights = self._top(tf.convert_to_tensor(tokens, tf.int32), states, context,
                                                     tf.constant(k, tf.int32))
        out = (values.numpy(), ids.numpy(), list(new_states))
        return (*out, weights.numpy()) if with_attention else out

    def training_inputs(self, inputs, owner: np.ndarray, tokens: np.ndarray) -> list:
        """The model's inputs for captions `tokens` of the images `inputs` (caption i is of image owner[i])."""
        return [maps_tensor(inputs.maps), tf.constant(inputs.features, tf.float32), tf.constant(owner, tf.int32),
                tf.constant(tokens, tf.int32)]
