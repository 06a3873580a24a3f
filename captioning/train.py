"""Teacher-forced training of the merge decoder with early stopping on a dev-split metric."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from captioning.cache import atomic_write
from captioning.config import Config
from captioning.decode import beam_search, greedy_search
from captioning.metrics import CiderD, corpus_bleu_scores
from captioning.model import build_decoder, make_step_decoder, masked_cross_entropy
from captioning.text import Vocabulary, pad_batch
from captioning.weights import arrays_sha256

EpochCallback = Callable[[int, dict], None]


class TrainingError(RuntimeError):
    """Training that cannot go on (e.g. the loss became NaN)."""


class StopTraining(Exception):
    """Raised by an epoch callback to end training after that epoch (a search's time budget ran out): the result is
    the best epoch so far, as if patience had run out; a self-critical stage not yet begun is skipped."""


def seed_everything(seed: int) -> None:
    keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow generators


class CaptionBatches:
    """(features, input ids) -> target ids, each batch padded to its own longest caption.

    Captions of similar length are batched together (sorted within shuffled pools of 50 batches), so little time
    goes to padding; the batch order is reshuffled every epoch from the seed.

    With `by_image` (the attention decoder), a batch holds all the captions of about batch_size / (captions per
    image) images (images of similar longest caption together), and yields (maps, feature vectors, each caption's
    image row, input ids) -> target ids, so that each image's projection is computed once per batch.
    """

    def __init__(self, features, captions: list[list[list[int]]], batch_size: int,
                 shuffle: bool, seed: int, mirrored=None, by_image: bool = False):
        self.features = features
        self.mirrored = mirrored  # if given, each caption (image) is paired with either image, drawn anew every epoch
        self.by_image, self.captions = by_image, captions
        self.samples = [(i, ids) for i, image_caps in enumerate(captions) for ids in image_caps]
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, 0
        self.tokens = sum(len(ids) - 1 for _, ids in self.samples)
        if by_image:
            per_image = len(self.samples) / max(1, sum(1 for caps in captions if caps))
            self.batch_size = max(1, round(batch_size / per_image))
        self._plan()

    def _plan(self) -> None:
        units = self.captions if self.by_image else self.samples  # what a batch is made of: images or captions
        order = np.arange(len(units))
        if self.by_image:
            order = np.array([i for i in order if self.captions[i]], np.int64)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = rng.permutation(order)
        pool = self.batch_size * 50
        if self.by_image:
            lengths = np.array([max((len(ids) for ids in caps), default=0) for caps in self.captions])
        else:
            lengths = np.array([len(ids) for _, ids in self.samples])
        chunks = [order[i:i + pool] for i in range(0, len(order), pool)]
        batches = []
        for chunk in chunks:
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        self.batches = batches
        if self.mirrored is not None:
            self.flipped = np.random.default_rng([self.seed, self.epoch, 1]).random(len(units)) < 0.5

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        if self.by_image:
            return self._image_batch(self.batches[index])
        picked = [self.samples[i] for i in self.batches[index]]
        ids = pad_batch([seq for _, seq in picked])
        rows = [i for i, _ in picked]
        images = self.features[rows]
        if self.mirrored is not None:
            images = np.where(self.flipped[self.batches[index]][:, None], self.mirrored[rows], images)
        return (images, ids[:, :-1]), ids[:, 1:]

    def _image_batch(self, images: np.ndarray):
        images = np.sort(images)
        inputs = self.features[images]
        if self.mirrored is not None and self.flipped[images].any():
            flip = np.flatnonzero(self.flipped[images])
            mirrored = self.mirrored[images[flip]]
            inputs.features[flip], inputs.maps[flip] = mirrored.features, mirrored.maps
        owner = np.array([row for row, i in enumerate(images) for _ in self.captions[i]], np.int32)
        ids = pad_batch([seq for i in images for seq in self.captions[i]])
        maps = inputs.maps.reshape(len(images), -1, inputs.maps.shape[-1])
        return (maps, inputs.features.astype(np.float32), owner, ids[:, :-1]), ids[:, 1:]

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.epoch += 1
            self._plan()

    def ahead(self):
        """One pass over the batches; each next batch is read (from the memory-mapped cache) in a thread while the
        model steps on the current one."""
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self.__getitem__, 0) if len(self) else None
            for index in range(len(self)):
                batch = pending.result()
                if index + 1 < len(self):
                    pending = pool.submit(self.__getitem__, index + 1)
                yield batch


def run_pass(model: keras.Model, batches: CaptionBatches, train: bool) -> float:
    """One pass of `batches` through the compiled model, training on them or not; the mean loss per caption.

    A plain loop over `train_on_batch` rather than `fit` on a tf.data pipeline: fed from tf.data, the attention
    decoder's step ran at half speed here, with as much system time as user time (page faults in the step)."""
    step = model.train_on_batch if train else model.test_on_batch
    total, rows = 0.0, 0
    for x, y in batches.ahead():
        total += float(step(x, y)) * len(y)
        rows += len(y)
    return total / max(rows, 1)


@dataclasses.dataclass
class TrainResult:
    model: keras.Model
    history: list[dict]  # one dict per epoch: loss, dev_loss, dev_bleu1..4, learning_rate, seconds
    best_epoch: int
    best: dict
    stopped_early: bool
    train_tokens: int
    start: dict | None = None  # a fine-tuning's starting weights, scored on dev (epoch 0)
    cut_after: int | None = None  # the epoch after which an epoch callback stopped the run (StopTraining)

    @property
    def seconds(self) -> float:
        return sum(h["seconds"] for h in self.history)


def evaluate_dev(decoder, vocab: Vocabulary, features, references: list[list[list[str]]], config: Config,
                 cider: CiderD | None = None) -> dict[str, float]:
    """Captions decoded as `selection_beam` says (1: greedy; k: beam search of width k with the config's length
    penalty), scored with NLTK BLEU-1..4 and, given a scorer of these references, CIDEr-D."""
    if config.selection_beam > 1:
        found = beam_search(decoder, features, config.max_length, config.selection_beam, config.length_penalty,
                            no_repeat_ngram=config.no_repeat_ngram)
        ids = [beams[0][0] for beams in found]
    else:
        ids = greedy_search(decoder, features, config.max_length, no_repeat_ngram=config.no_repeat_ngram)
    hypotheses = [vocab.decode(row) for row in ids]
    scores = corpus_bleu_scores(references, hypotheses)
    if cider is not None:
        scores["cider"] = cider.corpus_score(hypotheses)
    return scores


class Checkpoint:
    """An unfinished training as of its latest epoch, in one file that each epoch replaces atomically: the model's
    variables (weights and the dropout layers' random-generator states), the optimizer's (step, learning rate,
    moments) and the dev-selection state (history, best epoch and weights). A training given the same file and the
    same setting (`identity`) continues after that epoch exactly as if it had not been interrupted."""

    def __init__(self, path: Path, identity: dict):
        self.path = Path(path)
        self.identity = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    @staticmethod
    def _variables(model: keras.Model, optimizer) -> list:
        return list(model.variables) + list((optimizer or model.optimizer).variables)

    def save(self, model: keras.Model, selection: "_DevSelection", optimizer=None, stage: str = "teacher") -> None:
        """`optimizer`: the one training now (default: the model's); `stage`: teacher (forcing) or scst."""
        variables = self._variables(model, optimizer)
        arrays = {f"v{i}": v.numpy() for i, v in enumerate(variables)}
        arrays |= {f"b{i}": w for i, w in enumerate(selection.best_weights)}
        state = {"identity": self.identity, "epoch": len(selection.history), "history": selection.history,
                 "best": selection.best, "best_epoch": selection.best_epoch, "stage": stage,
                 "stage_start": selection.stage_start,
                 "variables": len(variables), "best_weights": len(selection.best_weights)}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: numpy adds no suffix
                np.savez(f, state=np.array(json.dumps(state)), **arrays)

        try:
            atomic_write(self.path, write)
        except OSError as exc:  # e.g. a full disk: the training goes on, it just cannot resume
            print(f"warning: cannot write the checkpoint {self.path} ({exc}); an interrupted run will start over",
                  file=sys.stderr)

    def restore(self, model: keras.Model, selection: "_DevSelection", scst_optimizer=None) -> tuple[int, str]:
        """Load the saved state into a compiled model; returns the epochs it had finished (0: nothing to resume)
        and the stage it was in (teacher or scst, whose optimizer is `scst_optimizer`)."""
        if not self.path.exists():
            return 0, "teacher"
        try:
            with np.load(self.path) as data:
                state = json.loads(str(data["state"]))
                if state.get("identity") != self.identity:  # another setting's: not this training's to resume
                    return 0, "teacher"
                stage = state.get("stage", "teacher")
                optimizer = scst_optimizer if stage == "scst" else model.optimizer
                optimizer.build(model.trainable_variables)
                variables = self._variables(model, optimizer)
                values = [data[f"v{i}"] for i in range(state["variables"])]
                best = [data[f"b{i}"] for i in range(state["best_weights"])]
        except Exception as exc:  # damaged, cut short, or from another version of the code
            print(f"warning: ignoring the checkpoint {self.path} ({type(exc).__name__}: {exc}); training starts "
                  "at epoch 1", file=sys.stderr)
            return 0, "teacher"
        shapes = [tuple(v.shape) for v in variables], [tuple(v.shape) for v in values]
        if shapes[0] != shapes[1] or [w.shape for w in model.get_weights()] != [w.shape for w in best]:
            print(f"warning: ignoring the checkpoint {self.path} (saved by a different model); training starts at "
                  "epoch 1", file=sys.stderr)
            return 0, "teacher"
        for variable, value in zip(variables, values):
            variable.assign(value)
        selection.best_weights = best
        selection.history, selection.best, selection.best_epoch = state["history"], state["best"], state["best_epoch"]
        selection.stage_start = state.get("stage_start", 0)
        return state["epoch"], stage


class _DevSelection:
    """Scores the dev split after each epoch, keeps the best weights, multiplies the learning rate by `lr_decay`
    after an epoch that does not improve, and stops after `patience` such epochs in a row. The self-critical stage
    goes on with the same selection (its epochs continue the numbering; its patience counts from its start)."""

    def __init__(self, config, vocab, dev_features, dev_references, epoch_callback, verbose, checkpoint=None):
        self.config, self.vocab, self.checkpoint = config, vocab, checkpoint
        self.dev_features, self.dev_references = dev_features, dev_references
        self.dev_cider = CiderD(dev_references)  # document frequencies of the dev references, counted once
        self.epoch_callback, self.verbose = epoch_callback, verbose
        self.history, self.best, self.best_epoch, self.best_weights = [], None, -1, None
        self.stage_start = 0  # epochs finished before the current stage began
        self.stopped_early = False
        self.start = None  # a fine-tuning's starting point, scored: epoch 0

    def end_epoch(self, model, epoch: int, loss: float, dev_loss: float, optimizer, started: float,
                  stage: str = "teacher", extra: dict | None = None) -> None:
        if not math.isfinite(loss):
            raise TrainingError(f"the training loss became {loss} in epoch {epoch}; lower the learning rate "
                                "(e.g. --set learning_rate=0.0003, or scst_learning_rate for the self-critical stage)")
        learning_rate = optimizer.learning_rate
        record = {"epoch": epoch, "stage": stage, "loss": float(loss), **self._dev_record(dev_loss),
                  "learning_rate": float(learning_rate.numpy()),
                  **(extra or {}), "seconds": time.perf_counter() - started}
        self.history.append(record)
        metric = self.config.selection_metric
        value = record["dev_loss"] if metric == "loss" else record[f"dev_{metric}"]
        better = self.best is None or (value < self.best if metric == "loss" else value > self.best)
        if better:
            self.best, self.best_epoch, self.best_weights = value, epoch, model.get_weights()
        elif self.config.lr_decay < 1.0:
            learning_rate.assign(learning_rate * self.config.lr_decay)
        if self.verbose:
            reward = f"  reward {record['reward']:.3f}" if "reward" in record else ""
            print(f"epoch {epoch:2d}{' scst' if stage == 'scst' else ''}  loss {record['loss']:.3f}  "
                  f"{_dev_text(record, reward)}  {record['seconds']:.0f}s" + ("  *" if better else ""), flush=True)
        if self.checkpoint is not None:  # before the callback, which may stop the run (pruned, interrupted)
            self.checkpoint.save(model, self, optimizer, stage)
        if self.epoch_callback is not None:
            self.epoch_callback(epoch, record)  # may raise, e.g. to prune a search trial

    def _dev_record(self, dev_loss: float) -> dict:
        """The model's dev loss and dev scores (decoded as selection_beam says), as an epoch's record holds them."""
        scores = evaluate_dev(self.decoder, self.vocab, self.dev_features, self.dev_references, self.config,
                              self.dev_cider)
        return {"dev_loss": float(dev_loss), **{f"dev_{k}": v for k, v in scores.items()}}

    def start_from(self, model, dev_loss: float) -> None:
        """Score the weights a fine-tuning starts from, as epoch 0: only a better epoch replaces them."""
        self.start = {"epoch": 0, "stage": "start", **self._dev_record(dev_loss)}
        self.best, self.best_epoch, self.best_weights = self.start[f"dev_{self.config.selection_metric}"], 0, \
            model.get_weights()
        if self.verbose:
            print(f"start     {_dev_text(self.start)}", flush=True)

    def done(self, epochs: int) -> bool:
        """Whether `patience` epochs in a row of the current stage have passed without a better one."""
        return epochs > 0 and epochs - max(self.best_epoch, self.stage_start) > self.config.patience


def _dev_text(record: dict, reward: str = "") -> str:
    return (f"dev loss {record['dev_loss']:.3f}{reward}  dev BLEU-1..4 {record['dev_bleu1']:.3f} "
            f"{record['dev_bleu2']:.3f} {record['dev_bleu3']:.3f} {record['dev_bleu4']:.3f}  CIDEr-D "
            f"{record['dev_cider']:.3f}")


def train_decoder(config: Config, vocab: Vocabulary, train_features: np.ndarray,
                  train_captions: list[list[list[str]]], dev_features: np.ndarray,
                  dev_captions: list[list[list[str]]], epoch_callback: EpochCallback | None = None,
                  verbose: bool = True, checkpoint: Path | None = None, train_mirrored: np.ndarray | None = None,
                  after_teacher_forcing: Callable[[keras.Model], None] | None = None,
                  start_weights: list[np.ndarray] | None = None) -> TrainResult:
    """Train on (features, cleaned captions) pairs; returns the model with its best dev-epoch weights.

    With `start_weights` (a trained decoder's, of this config and vocabulary) the run fine-tunes: no teacher
    forcing, only the self-critical stage's `scst_epochs`, starting from these weights, which are scored on dev
    first (epoch 0) so that only a better epoch replaces them.

    With `checkpoint`, the state after every epoch is kept in that file, and a run that finds the file of an
    interrupted run of the same setting continues after its last epoch: epoch_callback first sees the finished
    epochs again (their records carry `resumed_after`), then the new ones, the same as without the interruption."""
    seed_everything(config.seed)
    encode = lambda caps: [[vocab.encode(c, config.max_length) for c in image_caps] for image_caps in caps]
    attention = config.decoder == "attention"
    train = CaptionBatches(train_features, encode(train_captions), config.batch_size, shuffle=True, seed=config.seed,
                           mirrored=train_mirrored, by_image=attention)
    dev = CaptionBatches(dev_features, encode(dev_captions), config.batch_size, shuffle=False, seed=config.seed,
                         by_image=attention)
    if attention:
        from captioning.attention import build_attention_decoder

        model = build_attention_decoder(config, len(vocab), *train_features.shape[1:])
    else:
        model = build_decoder(config, len(vocab), train_features.shape[1])
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=masked_cross_entropy,
                  jit_compile=False)
    model.optimizer.build(model.trainable_variables)  # now: the first step would otherwise be traced twice
    saver = None
    if checkpoint is not None:
        identity = {"config": config.identity(), "vocabulary": vocab.words,
                    "features": list(train_features.shape) + list(dev_features.shape), "tokens": [train.tokens, dev.tokens]}
        if start_weights is not None:  # (only then: a training's checkpoint from before fine-tuning existed resumes)
            identity["start"] = arrays_sha256(start_weights)
        saver = Checkpoint(checkpoint, identity)
    selection = _DevSelection(config, vocab, dev_features, dev_captions, epoch_callback, verbose, saver)
    scst = None
    if start_weights is not None:  # (its config was checked: captioning.config.check_finetune)
        model.set_weights(start_weights)
        selection.decoder = make_step_decoder(model, vocab)
        selection.start_from(model, run_pass(model, dev, train=False))
    if config.scst_epochs:
        from captioning.scst import SelfCritical

        scst = SelfCritical(config, vocab, model, train_features, train_captions, dev, selection)
    done, stage = saver.restore(model, selection, scst and scst.optimizer) if saver is not None else (0, "teacher")
    cut_after = None
    try:
        if done and epoch_callback is not None:
            for record in selection.history:
                epoch_callback(record["epoch"], {**record, "resumed_after": done})
        if stage == "teacher" and start_weights is None:
            if done:
                train.epoch = done  # the batch order of the epoch it resumes at
                train._plan()
            if done < config.epochs and not selection.done(done):
                selection.decoder = make_step_decoder(model, vocab)  # shares the model's layers: sees every update
                for epoch in range(done + 1, config.epochs + 1):
                    started = time.perf_counter()
                    loss = run_pass(model, train, train=True)
                    train.on_epoch_end()  # the next epoch's order
                    selection.end_epoch(model, epoch, loss, run_pass(model, dev, train=False), model.optimizer,
                                        started)
                    if selection.done(epoch):
                        selection.stopped_early = True
                        break
            else:
                selection.stopped_early = selection.done(done)
            model.set_weights(selection.best_weights)  # the self-critical stage starts from the best of teacher forcing
            if scst is not None:
                selection.stage_start = len(selection.history)
                if after_teacher_forcing is not None:
                    after_teacher_forcing(model)
        if scst is not None:
            selection.decoder = make_step_decoder(model, vocab)
            selection.stopped_early = scst.train(done_epochs=len(selection.history))
    except StopTraining:
        cut_after = selection.history[-1]["epoch"] if selection.history else 0
        selection.stopped_early = True
    model.set_weights(selection.best_weights)
    return TrainResult(model=model, history=selection.history, best_epoch=selection.best_epoch,
                       best=selection.history[selection.best_epoch - 1] if selection.best_epoch else selection.start,
                       stopped_early=selection.stopped_early, train_tokens=train.tokens, start=selection.start,
                       cut_after=cut_after)
