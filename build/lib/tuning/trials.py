"""One trial, whichever engine asks for it: a config with some values replaced, trained by
captioning.pipeline.train_and_evaluate, logged as a nested MLflow run with its metrics, curves, samples and model.

The engine's trial (Optuna's, Keras Tuner's) is the record of what became of it; the TrialRunner mirrors that to
MLflow and to the console: `run` while it trains, `outcome` when the engine has recorded it, `lost` when its process
died. Checkpoints only let an interrupted trial resume."""
from __future__ import annotations

import math
import os
import tempfile
import textwrap
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import keras
import mlflow

from captioning.config import Config
from captioning.core.names import quote
from captioning.core.tracking import ROLE, STUDY
from captioning.data.dataset import Dataset
from captioning.features.prepare import FeatureCache, Prepared
from captioning.serving.mlflow_model import log_captioner
from captioning.training.run import RunResult, train_and_evaluate
from captioning.training.selection import TrainingError
from captioning.training.teacher import StopTraining
from tuning import tracking
from tuning.coordination import worker_id
from tuning.progress import EpochProgress
from tuning.settings import SearchSettings


class PruneTrial(Exception):
    """Raised by an engine's per-epoch report to stop a trial that is doing worse than the others."""


class TrialLost(Exception):
    """Raised by an engine's per-epoch report when another worker has declared this trial lost (its heartbeat was
    not seen for the grace period): the trial is abandoned, and its run marked KILLED."""


INTERRUPTED = threading.Event()  # set by the search's Ctrl-C handler


def stop_if_interrupted() -> None:
    """Raise the Ctrl-C that a library swallowed (one raised inside a garbage-collection callback is only printed)."""
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt


class TrialRunner:
    def __init__(self, base: Config, dataset: Dataset, settings: SearchSettings, study: str, engine: str,
                 experiment_id: str, parent_run_id: str, progress: EpochProgress | None = None,
                 checkpoints: Path | None = None):
        self.base, self.dataset, self.settings = base, dataset, settings
        self.progress = progress
        self.checkpoints = checkpoints  # a folder for the state of running trials, so an interrupted one resumes
        self.study, self.engine, self.experiment_id, self.parent_run_id = study, engine, experiment_id, parent_run_id
        self.features = FeatureCache(dataset)  # features per encoder setting, extracted once, shared by every trial
        self.last_run_id: str | None = None  # the MLflow run of the latest trial, whatever became of it
        self._loaded: dict[str, Any] = {}  # model URI -> its captioner: a growing ensemble loads each member once
        # The search's two clocks, from its start (time.monotonic()): no trial starts after search.timeout (never
        # after the budget: read_settings), and a trial still training ends with its epoch when search.budget ends.
        now = time.monotonic()
        self.last_start = None if settings.timeout is None else now + settings.timeout
        self.deadline = None if settings.budget is None else now + settings.budget
        self.sample_names = dataset.split("dev")[: settings.samples]

    def run(self, number: int, params: dict[str, Any], report: Callable[[int, float], None] | None = None,
            resumes: int | None = None, baseline: bool = False) -> dict[str, Any]:
        """Train and evaluate one trial; returns its final metrics. Raises PruneTrial or the trial's error.
        `resumes`: the number of an interrupted trial of the same values, whose checkpoint this one continues."""
        if baseline:
            self.say(f"trial {number:3d}  is the baseline: the experiment's base config, run first so that the "
                     "search's best is never worse on dev")
        config = self.base.replace(**params)
        keras.backend.clear_session()
        start = time.perf_counter()
        tags = {ROLE: "trial", STUDY: self.study, "engine": self.engine, "trial": str(number),
                "worker": worker_id(), "mlflow.parentRunId": self.parent_run_id}
        run = mlflow.start_run(experiment_id=self.experiment_id, run_name=f"{self.study}-trial-{number:03d}",
                               tags=tags)
        self.last_run_id = run.info.run_id
        status = "FAILED"  # until shown otherwise; a killed process leaves RUNNING, closed on the next start
        checkpoint = None
        if self.checkpoints is not None:
            checkpoint = self.checkpoints / f"trial-{number}.npz"
            earlier = self.checkpoints / f"trial-{resumes}.npz"
            if resumes is not None and earlier.exists():  # taken over (and checked against this trial's setting)
                os.replace(earlier, checkpoint)
        try:
            mlflow.log_params(config.to_dict())
            prepared, hits = self.features.get(config)
            mlflow.log_metric("feature_cache_hits", hits)
            if self.progress is not None:
                self.progress.start(number, config.epochs + config.scst_epochs)

            def on_epoch(epoch: int, record: dict) -> None:
                if epoch == 1 and record.get("resumed_after"):
                    self.say(f"trial {number:3d}  resumes an interrupted run of the same values after its epoch "
                             f"{record['resumed_after']}")
                    mlflow.set_tag("resumed_after_epoch", str(record["resumed_after"]))
                mlflow.log_metrics({"train_loss": record["loss"], "dev_loss": record["dev_loss"],
                                    "learning_rate": record["learning_rate"], "dev_epoch_cider": record["dev_cider"],
                                    **{f"dev_epoch_bleu{n}": record[f"dev_bleu{n}"] for n in range(1, 5)},
                                    **({"scst_reward": record["reward"]} if "reward" in record else {})},
                                   step=epoch)
                if self.progress is not None:
                    self.progress.epoch(number, epoch, record)
                stop_if_interrupted()
                if report is not None:
                    report(epoch, record[self.settings.epoch_metric])
                if self.deadline is not None and time.monotonic() >= self.deadline and not record.get("resumed_after"):
                    raise StopTraining  # the trial is complete with its best epoch so far (resumed ones: all logged)

            result = train_and_evaluate(config, prepared, epoch_callback=on_epoch, verbose=False,
                                        checkpoint=checkpoint, eval_splits=("dev",))  # test: registered only
            metrics = result.metrics()
            if not math.isfinite(metrics[self.settings.metric]):  # failed like any trial that raises
                raise TrainingError(f"{self.settings.metric} is {metrics[self.settings.metric]}")
            mlflow.log_metrics({**metrics, "best_epoch": result.training.best_epoch})
            self._log_samples(result, prepared)
            with tempfile.TemporaryDirectory() as tmp:
                info = log_captioner(result.captioner.save(Path(tmp) / "captioner"))
            cut = result.training.cut_after
            mlflow.set_tags({"state": "complete", "model_uri": info.model_uri,
                             **({"cut_by_budget_after_epoch": str(cut)} if cut is not None else {})})
            status = "FINISHED"
            return {**metrics, "wall_seconds": time.perf_counter() - start, "cut_after": cut}
        except PruneTrial:
            mlflow.set_tags({"state": "pruned"})
            status = "FINISHED"
            raise
        except TrialLost:
            mlflow.set_tags({"state": "killed"})
            status = "KILLED"
            raise
        except KeyboardInterrupt:
            checkpoint = None  # kept (first thing: a second Ctrl-C may follow): the rerun of these values resumes it
            mlflow.set_tags({"state": "interrupted"})
            status = "KILLED"
            raise
        except Exception as exc:
            mlflow.set_tags({"state": "failed", "error": f"{type(exc).__name__}: {exc}"[:5000]})
            mlflow.log_text(traceback.format_exc(), "error.txt")
            raise
        finally:
            if checkpoint is not None:  # the trial is over, whatever its outcome
                checkpoint.unlink(missing_ok=True)
            try:
                mlflow.log_metric("wall_seconds", time.perf_counter() - start)
            finally:
                mlflow.end_run(status)  # always, or the next trial could not start a run

    def say(self, line: str) -> None:
        (self.progress or EpochProgress("")).say(line)

    def outcome(self, number: int, params: dict[str, Any], state: str, metrics: dict | None = None,
                note: str = "") -> None:
        """The line that stays for a trial the engine has recorded: complete (with its metric), pruned or failed."""
        if state == "complete":
            result = f"{self.settings.metric} {metrics[self.settings.metric]:.4f}  {metrics['wall_seconds']:.0f}s"
            if metrics.get("cut_after") is not None:
                result += f"  (the budget ended it after epoch {metrics['cut_after']})"
        else:
            result = f"{state.upper()}: {note}"
        self.say(f"trial {number:3d}  {short(params)}  {result}")

    def lost(self, trial, rerun: bool = False) -> None:
        """A trial (Optuna's FrozenTrial) whose process died, found by a restart or another worker and already failed
        in the study: its MLflow run is closed, best effort (a finished study's sweep closes any run missed)."""
        number, worker = trial.number, trial.user_attrs.get("worker")
        try:
            closed = tracking.close_stale_runs(self.experiment_id, self.study, trial=number)
            note = ", its MLflow run KILLED" if closed else ""
        except Exception as exc:
            note = f" (its MLflow run is closed when the study ends: {type(exc).__name__})"
        then = ("its values run again first, from its last finished epoch" if rerun else
                "another trial runs in its place")
        self.say(f"search: trial {number} was lost with its process ({worker or 'worker unknown'}); marked failed"
                 f"{note}; {then}")

    def abandoned(self, number: int) -> None:
        """This worker's trial was declared lost by another one (no heartbeat seen in time): its result is not
        recorded, and its run (if it began) is marked KILLED, best effort: the study's record is what counts."""
        if self.last_run_id:
            client = mlflow.MlflowClient()
            try:
                client.set_tag(self.last_run_id, "state", "killed")
                client.set_tag(self.last_run_id, "note", "declared lost by another worker before its result was "
                               "recorded")
                client.set_terminated(self.last_run_id, "KILLED")
            except Exception as exc:  # the tracking server is away
                self.say(f"search: could not update an MLflow run ({type(exc).__name__}: {exc})")
        self.say(f"search: trial {number} was declared lost by another worker (no heartbeat seen for "
                 f"{self.settings.grace_seconds} s); this worker abandons it and goes on")

    def ensemble(self, run_ids: list[str]):
        """The complete trials `run_ids` (best first) decoded as one ensemble captioner, scored on dev as a trial is
        and logged as a run of its own (role `ensemble`, model included); None if fewer than two of them can be
        decoded together (a trial with another vocabulary, or whose model cannot load, is left out, said why). Each
        member reads the features it was trained on."""
        from captioning.decoding.captioner import Captioner
        from captioning.evaluation.choices import choose_length_penalty, penalty_line
        from captioning.evaluation.evaluate import evaluate
        from captioning.models.ensemble import check_compatible
        from captioning.serving.load import load_captioner

        client = mlflow.MlflowClient()

        def logged(numbers: list[str]):  # a rerun of a finished study: these members were scored and logged before
            done = client.search_runs([self.experiment_id], f"tags.`{STUDY}` = {quote(self.study)} and "
                                      f"tags.`{ROLE}` = 'ensemble' and tags.members = {quote(','.join(numbers))} "
                                      "and tags.state = 'complete'")
            return done[0] if done else None

        runs = [client.get_run(run_id) for run_id in run_ids]
        earlier = logged([run.data.tags.get("trial", "?") for run in runs])  # before loading any model
        if earlier is not None:
            return earlier
        members, numbers = [], []
        for run in runs:
            try:
                uri = run.data.tags["model_uri"]
                captioner = self._loaded[uri] = self._loaded.get(uri) or load_captioner(uri)
                check_compatible(members + [captioner])
            except Exception as exc:  # another vocabulary (EnsembleError), a model that cannot load
                self.say(f"search: trial {run.data.tags.get('trial')} is left out of the ensemble: {exc}")
                continue
            members.append(captioner)
            numbers.append(run.data.tags.get("trial", "?"))
        if len(members) < 2:
            return None
        earlier = logged(numbers) if len(numbers) < len(runs) else None  # some were left out
        if earlier is not None:
            return earlier
        ensemble = Captioner.ensemble(members)
        evaluations = [evaluate(ensemble, self.features, "dev", 1)]
        score = self.settings.metric.removeprefix("dev_")
        label = f"ensemble of trials {', '.join(numbers)}"
        if ensemble.config.beam_width > 1 and not score.startswith("greedy_"):
            tried = choose_length_penalty(ensemble, self.features, score)
            self.say(f"search: the {label} decodes with {penalty_line(tried, score, ensemble.config.length_penalty)}")
            evaluations.append(tried[ensemble.config.length_penalty])
        elif ensemble.config.beam_width > 1:
            evaluations.append(evaluate(ensemble, self.features, "dev", ensemble.config.beam_width))
        metrics = RunResult(ensemble, None, evaluations).metrics()
        tags = {ROLE: "ensemble", STUDY: self.study, "engine": self.engine, "worker": worker_id(),
                "label": label, "members": ",".join(numbers),
                "mlflow.parentRunId": self.parent_run_id}
        with mlflow.start_run(experiment_id=self.experiment_id, run_name=f"{self.study}-ensemble", tags=tags) as run:
            try:
                mlflow.log_params(ensemble.config.to_dict())  # the first member's (it decodes), its penalty chosen
                mlflow.log_metrics(metrics)
                with tempfile.TemporaryDirectory() as tmp:
                    info = log_captioner(ensemble.save(Path(tmp) / "captioner"))
            except Exception as exc:
                mlflow.set_tags({"state": "failed", "error": f"{type(exc).__name__}: {exc}"[:5000]})
                raise
            mlflow.set_tags({"state": "complete", "model_uri": info.model_uri})
        return client.get_run(run.info.run_id)

    def _log_samples(self, result: RunResult, prepared: Prepared) -> None:
        """Captions of a fixed set of dev images: a table artifact and a small gallery figure."""
        if not self.sample_names:
            return
        dev = prepared.dataset.split("dev")
        rows = [dev.index(name) for name in self.sample_names]
        captions = result.captioner.decode_features(prepared.inputs("dev", result.captioner.config.decoder)[rows])
        table = {"image": self.sample_names, "caption": [c[0][0] for c in captions],
                 "references": [" | ".join(self.dataset.raw_captions[n]) for n in self.sample_names]}
        mlflow.log_table(table, "samples.json")
        mlflow.log_figure(gallery(self.dataset, self.sample_names, table["caption"]), "gallery.png")


def short(params: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def gallery(dataset: Dataset, names: list[str], captions: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from captioning.data.images import load_rgb

    columns = 4
    rows = (len(names) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, name, caption in zip(axes.flat, names, captions):
        ax.imshow(load_rgb(dataset.images[name]))
        ax.set_title("\n".join(textwrap.wrap(caption, 34, break_long_words=False) or ["(empty)"]), fontsize=8)
    figure.tight_layout()
    plt.close(figure)
    return figure

