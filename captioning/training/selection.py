"""Model selection on dev: every epoch scored on the dev split, the best weights kept, the learning rate decayed and
training stopped by patience; and the checkpoint that lets an interrupted training resume exactly."""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from captioning.config import Config
from captioning.core.cache import atomic_write
from captioning.core.errors import TrainingError  # noqa: F401 (raised here; defined there for the CLI)
from captioning.data.text import Vocabulary
from captioning.decoding.search import beam_search, greedy_search
from captioning.metrics import epoch_scorer, metric_spec


def evaluate_dev(decoder, vocab: Vocabulary, features, config: Config,
                 score: Callable[[list[list[str]]], dict[str, float]]) -> dict[str, float]:
    """Captions decoded as `selection_beam` says (1: greedy; k: beam search of width k with the config's length
    penalty), scored by `score` (captioning.metrics.epoch_scorer: every metric scored after each epoch)."""
    if config.selection_beam > 1:
        found = beam_search(decoder, features, config.max_length, config.selection_beam, config.length_penalty,
                            no_repeat_ngram=config.no_repeat_ngram)
        ids = [beams[0][0] for beams in found]
    else:
        ids = greedy_search(decoder, features, config.max_length, no_repeat_ngram=config.no_repeat_ngram)
    return score([vocab.decode(row) for row in ids])


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

    def save(self, model: keras.Model, selection: "DevSelection", optimizer=None, stage: str = "teacher") -> None:
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

    def restore(self, model: keras.Model, selection: "DevSelection", scst_optimizer=None) -> tuple[int, str]:
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


class DevSelection:
    """Scores the dev split after each epoch, keeps the best weights, multiplies the learning rate by `lr_decay`
    after an epoch that does not improve, and stops after `patience` such epochs in a row. The self-critical stage
    goes on with the same selection (its epochs continue the numbering; its patience counts from its start)."""

    def __init__(self, config, vocab, dev_features, dev_references, epoch_callback, verbose, checkpoint=None):
        self.config, self.vocab, self.checkpoint = config, vocab, checkpoint
        self.dev_features, self.dev_references = dev_features, dev_references
        self.dev_score = epoch_scorer(dev_references)  # each scorer prepared once (e.g. CIDEr-D's frequencies)
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
        lower = metric == "loss" or not metric_spec(metric).higher_is_better
        better = self.best is None or (value < self.best if lower else value > self.best)
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
        scores = evaluate_dev(self.decoder, self.vocab, self.dev_features, self.config, self.dev_score)
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


