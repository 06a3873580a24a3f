"""MLflow runs of a study: its one parent run, stale runs closed, its trials' record (the experiment, the tags and the
registry's champion rule: captioning/core/tracking.py, captioning/serving/registry.py)."""
from __future__ import annotations

from collections import Counter

from mlflow import MlflowClient

from captioning.core.names import quote
from captioning.core.tracking import ROLE, STUDY


def parent_run_id(experiment_id: str, study: str) -> str | None:
    runs = MlflowClient().search_runs([experiment_id], f"tags.`{ROLE}` = 'study' and tags.`{STUDY}` = {quote(study)}",
                                      max_results=1)
    return runs[0].info.run_id if runs else None


def close_stale_runs(experiment_id: str, study: str, role: str | None = None, trial: int | None = None) -> int:
    """Runs of this study (only its `role` runs, or only trial number `trial`'s) left RUNNING by a process that died
    are marked KILLED, a trial run's state tag too; returns how many."""
    client = MlflowClient()
    query = f"tags.`{STUDY}` = {quote(study)} and attributes.status = 'RUNNING'"
    query += f" and tags.`{ROLE}` = {quote(role)}" if role else ""
    query += f" and tags.trial = {quote(trial)}" if trial is not None else ""
    stale = client.search_runs([experiment_id], query)
    for run in stale:
        if run.data.tags.get(ROLE) == "trial":
            client.set_tag(run.info.run_id, "state", "killed")
        client.set_terminated(run.info.run_id, "KILLED")
    return len(stale)


def trial_record(experiment_id: str, study: str, metric: str) -> tuple[dict[str, int], list[str]]:
    """For an engine that keeps no MLflow run ids (Keras Tuner): the study's trial runs by state, and the runs of its
    complete ones, best first by `metric`."""
    runs = MlflowClient().search_runs([experiment_id], f"tags.`{STUDY}` = {quote(study)} and tags.`{ROLE}` = 'trial'",
                                      max_results=5000)
    states = Counter(run.data.tags.get("state", "killed" if run.info.status == "KILLED" else "running")
                     for run in runs)
    complete = [r for r in runs if r.data.tags.get("state") == "complete" and metric in r.data.metrics]
    return states, [r.info.run_id for r in sorted(complete, key=lambda r: -r.data.metrics[metric])]
