"""Teacher-forced training of any registered decoder with selection of the best epoch on dev, then, when configured,
its self-critical stage; resumable from a checkpoint after every epoch."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from captioning.config import Config
from captioning.data.text import Vocabulary
from captioning.features.weights import arrays_sha256
from captioning.models import build_model, decoder_spec, make_step_decoder
from captioning.models.base import caption_loss
from captioning.training.batches import CaptionBatches, WarmUp, run_pass, seed_everything
from captioning.training.scst import SelfCritical
from captioning.training.selection import Checkpoint, DevSelection

EpochCallback = Callable[[int, dict], None]


class StopTraining(Exception):
    """Raised by an epoch callback to end training after that epoch (a search's time budget ran out): the result is
    the best epoch so far, as if patience had run out; a self-critical stage not yet begun is skipped."""


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
    by_image = decoder_spec(config.decoder).reads_maps  # each image's maps projected once per batch
    train = CaptionBatches(train_features, encode(train_captions), config.batch_size, shuffle=True, seed=config.seed,
                           mirrored=train_mirrored, by_image=by_image)
    dev = CaptionBatches(dev_features, encode(dev_captions), config.batch_size, shuffle=False, seed=config.seed,
                         by_image=by_image)
    model = build_model(config, len(vocab), train_features)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=caption_loss(config.label_smoothing),
                  jit_compile=False)
    warmup = WarmUp(config.learning_rate, config.warmup_steps) if config.warmup_steps else None
    model.optimizer.build(model.trainable_variables)  # now: the first step would otherwise be traced twice
    saver = None
    if checkpoint is not None:
        identity = {"config": config.identity(), "vocabulary": vocab.words,
                    "features": list(train_features.shape) + list(dev_features.shape), "tokens": [train.tokens, dev.tokens]}
        if start_weights is not None:  # (only then: a training's checkpoint from before fine-tuning existed resumes)
            identity["start"] = arrays_sha256(start_weights)
        saver = Checkpoint(checkpoint, identity)
    selection = DevSelection(config, vocab, dev_features, dev_captions, epoch_callback, verbose, saver)
    scst = None
    if start_weights is not None:  # (its config was checked: captioning.config.check_finetune)
        model.set_weights(start_weights)
        selection.decoder = make_step_decoder(model, vocab)
        selection.start_from(model, run_pass(model, dev, train=False))
    if config.scst_epochs:
        scst = SelfCritical(config, vocab, model, train_features, train_captions, dev, selection)
    done, stage = saver.restore(model, selection, scst and scst.optimizer) if saver is not None else (0, "teacher")
    cut_after = None
    try:
        if done and epoch_callback is not None:
            for record in selection.history:
                epoch_callback(record["epoch"], {**record, "resumed_after": done})
        if stage == "teacher" and start_weights is None:
            if done:
                train.start_at(done)  # the batch order of the epoch it resumes at
            if done < config.epochs and not selection.done(done):
                selection.decoder = make_step_decoder(model, vocab)  # shares the model's layers: sees every update
                for epoch in range(done + 1, config.epochs + 1):
                    started = time.perf_counter()
                    loss = run_pass(model, train, train=True, warmup=warmup)
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
