"""What a comparison report shows, read from MLflow: the studies, one row per trial, and the per-epoch curves."""
from __future__ import annotations

import dataclasses
import math

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from captioning.core.names import quote
from captioning.core.tracking import ROLE, STUDY, redact
from captioning.metrics import metric_names
from captioning.serving.registry import aliases_by_version

BLEU = [f"bleu{n}" for n in range(1, 5)]
# (The per-epoch dev scores decode greedily, or with beam search where the run's selection_beam says so.)
CURVES = {"dev_loss": "dev loss", "dev_epoch_bleu4": "dev BLEU-4 (per epoch)",
          "dev_epoch_cider": "dev CIDEr-D (per epoch)", "train_loss": "train loss"}


class ReportError(LookupError):
    """Nothing to report on: no such study or run, or no completed trial with the metric."""


@dataclasses.dataclass
class Study:
    name: str
    experiment: str
    engine: str
    metric: str
    data: str | None
    storage: str | None
    run_id: str | None  # the study's parent run


@dataclasses.dataclass
class Selection:
    name: str
    studies: list[Study]
    trials: pd.DataFrame  # one row per trial run
    curves: pd.DataFrame  # study, label, epoch, measure, value
    params: list[str]  # the hyperparameters that vary between the trials
    metric: str
    notes: list[str]

    def complete(self) -> pd.DataFrame:
        return self.trials[(self.trials.state == "complete") & self.trials[self.metric].notna()]

    def top(self, per_study: int) -> pd.DataFrame:
        """The best completed trials of each study, best first."""
        ranked = self.complete().sort_values(self.metric, ascending=False)
        return ranked.groupby("study", sort=False).head(per_study)


def _all_experiment_ids(client: MlflowClient) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


def _study_from_parent(client: MlflowClient, run) -> Study:
    params, tags = run.data.params, run.data.tags
    experiment = client.get_experiment(run.info.experiment_id).name
    return Study(name=tags[STUDY], experiment=experiment, engine=tags.get("engine", params.get("engine", "?")),
                 metric=params.get("metric", "dev_bleu4"), data=params.get("data"), storage=params.get("storage"),
                 run_id=run.info.run_id)


def _known_studies(client: MlflowClient) -> str:
    runs = client.search_runs(_all_experiment_ids(client), f"tags.`{ROLE}` = 'study'", max_results=20,
                              order_by=["attributes.start_time DESC"])
    return ", ".join(r.data.tags[STUDY] for r in runs) or "none (run: python tuning/search.py)"


def find_studies(client: MlflowClient, names: list[str] | None, experiment: str | None) -> list[Study]:
    """Studies by name, or the latest study of an experiment."""
    if names:
        found = []
        for name in names:
            runs = client.search_runs(_all_experiment_ids(client),
                                      f"tags.`{ROLE}` = 'study' and tags.`{STUDY}` = {quote(name)}", max_results=1)
            if not runs:
                raise ReportError(f"no study named {name!r} in {redact(client.tracking_uri)}; recent studies: "
                                  f"{_known_studies(client)}")
            found.append(_study_from_parent(client, runs[0]))
        return found
    name = experiment or "shapes"
    exp = client.get_experiment_by_name(name)
    runs = [] if exp is None else client.search_runs([exp.experiment_id], f"tags.`{ROLE}` = 'study'", max_results=1,
                                                     order_by=["attributes.start_time DESC"])
    if not runs:
        raise ReportError(f"experiment {name!r} has no study in {redact(client.tracking_uri)} (run: python tuning/search.py"
                          f"{'' if name == 'shapes' else f' --experiment {name}'}); recent studies: "
                          f"{_known_studies(client)}")
    return [_study_from_parent(client, runs[0])]


def _row(client: MlflowClient, run, registry: dict[str, str]) -> dict:
    tags, metrics = run.data.tags, run.data.metrics
    state = tags.get("state") or ("killed" if run.info.status == "KILLED" else run.info.status.lower())
    row = {"study": tags.get(STUDY, "?"), "trial": int(tags.get("trial", -1)), "run_id": run.info.run_id,
           "state": state, "wall_seconds": metrics.get("wall_seconds", math.nan),
           "best_epoch": int(metrics["best_epoch"]) if "best_epoch" in metrics else "",
           "model_uri": tags.get("model_uri"),
           "registry": registry.get(run.info.run_id, ""), "error": tags.get("error", "")}
    for split in ("dev", "test"):
        shown = split == "dev" or bool(row["registry"])  # test scores: registered versions only
        for score in metric_names():  # NLTK BLEU-1..4 and the COCO metrics (NaN where a trial did not log one)
            for name in (f"{split}_{score}", f"{split}_greedy_{score}"):
                row[name] = metrics.get(name, math.nan) if shown else math.nan
    row["params"] = dict(run.data.params)
    return row


def registry_marks(client: MlflowClient, model_name: str) -> dict[str, str]:
    """run id -> 'champion (v3)', 'challenger (v4)' or 'v2' for every registered version of the model; a version
    whose decoding a search chose on dev (a run of its own, tuning/decoding_choice.py) marks its trial's run too."""
    aliases = aliases_by_version(client, model_name)
    marks = {}
    for version in client.search_model_versions(f"name = {quote(model_name)}"):
        alias = "/".join(aliases.get(str(version.version), []))
        marks[version.run_id] = f"{alias} (v{version.version})" if alias else f"v{version.version}"
        source = client.get_run(version.run_id).data.tags.get("source_run")
        if source:
            marks.setdefault(source, f"{marks[version.run_id]}, decoding chosen on dev")
    return marks


def _curves(client: MlflowClient, trials: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for trial in trials.itertuples():
        for key, measure in CURVES.items():
            for point in client.get_metric_history(trial.run_id, key):
                rows.append({"study": trial.study, "label": trial.label, "run_id": trial.run_id,
                             "epoch": point.step, "measure": measure, "value": point.value})
    return pd.DataFrame(rows, columns=["study", "label", "run_id", "epoch", "measure", "value"])


def _numeric(value: str):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() and "." not in str(value) and "e" not in str(value).lower() else number


def collect(client: MlflowClient, studies: list[Study] | None = None, run_ids: list[str] | None = None,
            model_name: str = "captioner", name: str | None = None) -> Selection:
    """Every trial of the studies (or the given runs) with hyperparameters, state, metrics and curves."""
    registry = registry_marks(client, model_name)
    notes: list[str] = []
    if run_ids:
        runs = []
        for run_id in run_ids:
            try:
                runs.append(client.get_run(run_id))
            except MlflowException:
                raise ReportError(f"no run {run_id!r} in {redact(client.tracking_uri)}") from None
        names = sorted({r.data.tags.get(STUDY, "runs") for r in runs})
        studies = []
        for study in names:
            parents = client.search_runs(_all_experiment_ids(client), f"tags.`{ROLE}` = 'study' and "
                                         f"tags.`{STUDY}` = {quote(study)}", max_results=1)
            studies.append(_study_from_parent(client, parents[0]) if parents else
                           Study(study, "?", "?", "dev_bleu4", None, None, None))
    else:
        runs = []
        for study in studies:
            found = client.search_runs([client.get_experiment_by_name(study.experiment).experiment_id],
                                       f"tags.`{STUDY}` = {quote(study.name)} and tags.`{ROLE}` = 'trial'",
                                       max_results=10000)
            if not found:
                raise ReportError(f"study {study.name!r} has no trial runs yet; run its search first")
            runs += found
    metric = studies[0].metric
    if any(s.metric != metric for s in studies):
        notes.append(f"the studies optimise different metrics; all are ranked by {metric}")
    frame = pd.DataFrame([_row(client, run, registry) for run in runs])
    frame = frame.sort_values(["study", "trial"]).reset_index(drop=True)
    multi = frame.study.nunique() > 1
    frame["label"] = [f"{s} #{t}" if multi else f"trial {t}" for s, t in zip(frame.study, frame.trial)]
    params = pd.DataFrame([{k: _numeric(v) for k, v in p.items()} for p in frame.pop("params")])
    varying = [c for c in params.columns if params[c].astype(str).nunique() > 1 and c != "seed"]
    frame = pd.concat([frame, params[varying]], axis=1)
    complete = frame[(frame.state == "complete") & frame[metric].notna()]
    if complete.empty:
        states = ", ".join(f"{n} {s}" for s, n in frame.state.value_counts().items())
        raise ReportError(f"no completed trial with {metric} to compare ({len(frame)} runs: {states}); "
                          "let a search finish at least one trial")
    missing = frame[(frame.state == "complete") & frame[metric].isna()]
    if len(missing):
        notes.append(f"{len(missing)} completed run(s) have no {metric} and are listed without rank")
    name = name or ("-vs-".join(s.name for s in studies) if len(studies) <= 3 else f"{len(studies)}-studies")
    return Selection(name, studies, frame, _curves(client, frame), varying, metric, notes)
