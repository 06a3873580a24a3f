"""Self-critical sequence training (Rennie et al. 2017), the stage after teacher forcing.

Each step samples `scst_samples` captions per image from the model, rewards each with its CIDEr-D against the
image's train references (document frequencies of the train split, counted once), plus `scst_bleu_weight` times its
sentence BLEU-4 against them (whose brevity penalty also asks for captions no shorter than the references), and
raises the log-probability of the samples that beat a baseline: the mean reward of the image's other samples
(`scst_baseline: mean`), or the reward of the image's greedy caption (`greedy`). The loss is the policy
gradient's surrogate, -sum(advantage * log p(word)) / words, computed by one teacher-forced pass over the sampled
captions.

The stage starts from the best teacher-forced weights and shares their dev selection (best epoch, learning-rate
decay, early stopping, checkpoints): its epochs continue the numbering and are marked `stage: scst`. Samples are
drawn with stateless seeds (seed, epoch, step), so a resumed stage draws what the interrupted one would have.
"""
from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from captioning.config import Config
from captioning.core.graph import graph_function
from captioning.data.text import Vocabulary, pad_batch
from captioning.decoding.search import greedy_search
from captioning.metrics.bleu import SentenceBleu
from captioning.metrics.cider import CiderD
from captioning.models import make_step_decoder
from captioning.training.batches import run_pass

BANNED = -1e9  # logit offset of padding, start and <unk>, which sampling never draws (finite: 0 * it is 0)


class SelfCritical:
    def __init__(self, config: Config, vocab: Vocabulary, model: keras.Model, train_features: np.ndarray,
                 train_captions: list[list[list[str]]], dev_batches, selection):
        self.config, self.vocab, self.model = config, vocab, model
        self.features, self.dev_batches, self.selection = train_features, dev_batches, selection
        self.cider = CiderD(train_captions)
        self.bleu = SentenceBleu(train_captions) if config.scst_bleu_weight else None
        self.optimizer = keras.optimizers.Adam(config.scst_learning_rate)
        self.optimizer.build(model.trainable_variables)  # now, so that the train step is traced once, not twice
        self.decoder = make_step_decoder(model, vocab)
        self.banned = tf.maximum(self.decoder.banned, BANNED)
        if self.decoder.signature is None:
            self._sample_step = graph_function(self._sample_step_impl, reduce_retracing=True)
        else:
            signature = self.decoder.signature
            self._sample_step = graph_function(self._sample_step_impl, input_signature=[
                tf.TensorSpec((None,), tf.int32), signature["states"], signature["context"],
                tf.TensorSpec((2,), tf.int32)])
        self._train_step = graph_function(self._train_step_impl, input_signature=[
            self.decoder.training_signature, tf.TensorSpec((None, None), tf.int32), tf.TensorSpec((None,), tf.float32)])

    # --- One epoch -----------------------------------------------------------------------------------------------

    def train(self, done_epochs: int) -> bool:
        """Run the stage's epochs after the `done_epochs` already recorded; True if it stopped early."""
        selection, config = self.selection, self.config
        last = selection.stage_start + config.scst_epochs
        for epoch in range(done_epochs + 1, last + 1):
            if selection.done(epoch - 1):
                return True
            started = time.perf_counter()
            loss, reward = self.epoch(epoch)
            dev_loss = run_pass(self.model, self.dev_batches, train=False)
            selection.end_epoch(self.model, epoch, loss, float(dev_loss), self.optimizer, started, stage="scst",
                                extra={"reward": reward})
        return selection.done(last)

    def epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over the train images in a seeded order; the mean surrogate loss and the mean sample reward."""
        config = self.config
        order = np.random.default_rng([config.seed, epoch]).permutation(len(self.features))
        losses, rewards = [], []
        for step, start in enumerate(range(0, len(order), config.batch_size)):
            images = order[start:start + config.batch_size]
            loss, reward = self.step(images, seed=(config.seed * 1_000_003 + epoch, step))
            losses.append(loss)
            rewards.append(reward)
        return float(np.mean(losses)), float(np.mean(rewards))

    def step(self, images: np.ndarray, seed: tuple[int, int]) -> tuple[float, float]:
        samples = self.config.scst_samples
        batch = self.features[images]
        owners = np.repeat(images, samples)
        ids = self.sample(batch, seed)
        rewards = self.reward(ids, owners)
        advantages = rewards - self.baseline(rewards, images)
        tokens = pad_batch([[self.vocab.start_id, *row, self.vocab.end_id] for row in ids])
        inputs = self.decoder.training_inputs(batch, np.repeat(np.arange(len(images)), samples), tokens[:, :-1])
        loss = self._train_step(inputs, tf.constant(tokens[:, 1:]), tf.constant(advantages, tf.float32))
        return float(loss), float(rewards.mean())

    def reward(self, ids: list[list[int]], images) -> np.ndarray:
        """Each caption's reward against its image's train references: CIDEr-D (+ weight x sentence BLEU-4)."""
        captions = [self.vocab.decode(row) for row in ids]
        rewards = self.cider.scores(captions, images)
        if self.bleu is not None:
            rewards += self.config.scst_bleu_weight * self.bleu.scores(captions, images)
        return rewards

    def baseline(self, rewards: np.ndarray, images: np.ndarray) -> np.ndarray:
        samples = self.config.scst_samples
        if self.config.scst_baseline == "greedy":
            greedy = greedy_search(self.decoder, self.features[images], self.config.max_length,
                                   no_repeat_ngram=self.config.no_repeat_ngram)
            return np.repeat(self.reward(greedy, images), samples)
        grouped = rewards.reshape(-1, samples)
        others = (grouped.sum(axis=1, keepdims=True) - grouped) / (samples - 1)
        return others.reshape(-1)

    # --- Sampling and the policy-gradient step --------------------------------------------------------------------

    def sample(self, images, seed: tuple[int, int]) -> list[list[int]]:
        """scst_samples captions per image, drawn word by word from the model's distribution (word ids, no start or
        end), image by image: [image 0's samples, image 1's, ...]."""
        context, states = self.decoder.start(images)
        samples = self.config.scst_samples
        context = tuple(tf.repeat(c, samples, axis=0) for c in context)
        states = [tf.repeat(s, samples, axis=0) for s in states]
        n = len(images) * samples
        tokens = tf.fill((n,), self.vocab.start_id)
        words = np.zeros((n, self.config.max_length - 2), np.int32)
        finished = np.zeros(n, bool)
        for t in range(self.config.max_length - 2):  # start + words + end fit in max_length, as in training
            tokens, states = self._sample_step(tokens, states, context, tf.constant([seed[0], seed[1] * 1000 + t]))
            drawn = tokens.numpy()
            words[:, t] = np.where(finished, 0, drawn)
            finished |= drawn == self.vocab.end_id
            if finished.all():
                break
        out = []
        for row in words:
            ends = np.flatnonzero((row == self.vocab.end_id) | (row == 0))
            out.append(row[: ends[0] if ends.size else len(row)].tolist())
        return out

    def _sample_step_impl(self, tokens, states, context, seed):
        logp, states = self.decoder.graph_step(tokens, states, context)
        drawn = tf.random.stateless_categorical(logp, 1, seed, dtype=tf.int32)[:, 0]
        return drawn, states

    def _train_step_impl(self, inputs, targets, advantages):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            # Without dropout: the gradient is that of the policy the captions were sampled from. (The attention
            # penalty is not part of this loss: the reward alone decides.)
            logits = self.model(inputs, training=False) + self.banned
            mask = tf.cast(tf.not_equal(targets, 0), logits.dtype)
            log_p = -tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
            loss = -tf.reduce_sum(advantages[:, None] * log_p * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss
