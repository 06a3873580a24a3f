"""Where the workbench keeps its runs and models, and how their addresses appear in output: the tracking URI every
command resolves the same way, the experiment and the tags of a study's runs, and database or server URLs with their
passwords hidden or warned about."""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

# The tags that tell a study's runs apart: its role (study, trial, ensemble) and the study's name.
ROLE, STUDY = "captioning.role", "captioning.study"


def resolve_tracking_uri(cli_uri: str | None = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else MLflow's default database in the working directory."""
    import mlflow

    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def quiet_libraries() -> None:
    """For commands that log models: keep the libraries' notices about choices made on purpose (a model-from-code
    file, no input example, one tf.function per decoder) and their progress bars out of the output."""
    import logging
    import warnings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # two lines per run with a server
    warnings.filterwarnings("ignore", message=".*input example was not provided")
    for name in ("mlflow.pyfunc", "mlflow.store.db.utils", "mlflow.models.model", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_state(name: str) -> Path:
    """Where a command's run state goes by default: the directory it runs from, as MLflow's own default
    (./mlflow.db, ./mlruns), so that `mlflow ui` started there finds it; not the installed package's folder."""
    return Path.cwd() / name


def default_tracking_uri() -> str:
    return f"sqlite:///{run_state('mlflow.db')}"


def redact(url: str) -> str:
    """A database or server URL with its password hidden (in its user part or a `password=` parameter), for logs,
    reports and pages."""
    from sqlalchemy.engine import make_url

    hide_query = lambda text: re.sub(r"([?&]password=)[^&]*", r"\1***", text, flags=re.IGNORECASE)
    if "@" not in url:
        return hide_query(url)
    try:
        return hide_query(make_url(url).render_as_string(hide_password=True))
    except Exception:  # not a database URL (e.g. http://user:pw@host): drop the credentials
        scheme, _, rest = url.partition("://")
        return hide_query(f"{scheme}://***@{rest.rsplit('@', 1)[-1]}")


def password_warning(option: str, url: str | None) -> str | None:
    """One line for a URL given as a command-line option with a password in it (in its user part or a
    `password=` parameter), which every user of the machine can read in the process list; None otherwise."""
    if not url:
        return None
    parts = urlsplit(url)
    try:
        password = parts.password
    except ValueError:  # not a URL with a host part
        password = None
    if not (password or "password" in parse_qs(parts.query)):
        return None
    if parts.scheme in ("http", "https"):
        instead = ("give the tracking server's user and password in $MLFLOW_TRACKING_USERNAME and "
                   "$MLFLOW_TRACKING_PASSWORD instead")
    else:
        variable = "CAPTIONING_STORAGE" if option == "--storage" else "MLFLOW_TRACKING_URI"
        instead = (f"put the URL in ${variable} instead, or leave the password out of it and keep it in ~/.pgpass "
                   "or $PGPASSWORD")
    return f"warning: the password in {option} is visible to other users of this machine in the process list; " \
           + instead


def ensure_experiment(name: str) -> str:
    """The MLflow experiment's id, created if new (its artifacts beside the default database, as absolute paths)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if mlflow.get_tracking_uri() == default_tracking_uri():
        location = run_state("mlruns").as_uri()  # artifacts beside the database, as an absolute path
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as exc:  # another worker created it a moment ago
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id

