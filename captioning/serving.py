"""The captioner as an MLflow pyfunc model: a DataFrame of images in, a DataFrame of captions out.

Input: a column `image` (or the only column) holding file paths, raw image bytes, or base64-encoded image bytes
(what a REST client sends). Output: a column `caption`. Parameter `beam_width` (1 = greedy) overrides the model's.
The model's artifact is the captioner bundle (config, vocabulary, decoder); the encoder weights are resolved offline
by name on the serving machine, so every logged model stays a few MB.
"""
from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

from captioning.images import ImageError

PROJECT = Path(__file__).resolve().parents[1]


def _image_source(value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        if Path(text).suffix and len(text) < 4096 and Path(text).exists():
            return Path(text)
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError(f"{value[:80]!r} is neither an existing image path nor base64-encoded image bytes") \
                from None
    raise ImageError(f"cannot read an image from a {type(value).__name__}; give a path, bytes or base64 text")


class CaptionerModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from captioning.captioner import Captioner

        self.captioner = Captioner.load(context.artifacts["captioner"])

    def predict(self, context, model_input: pd.DataFrame, params=None):  # MLflow checks inputs against the signature
        if isinstance(model_input, pd.DataFrame):
            column = "image" if "image" in model_input.columns else model_input.columns[0]
            values = list(model_input[column])
        else:
            values = list(model_input if isinstance(model_input, (list, tuple)) else [model_input])
        beam_width = int((params or {}).get("beam_width") or self.captioner.config.beam_width)
        captions = self.captioner.caption([_image_source(v) for v in values], beam_width=beam_width)
        return pd.DataFrame({"caption": captions})


def pip_requirements() -> list[str]:
    """The project's pinned runtime requirements (tests excluded) plus MLflow, for the logged model's environment."""
    lines = (PROJECT / "requirements.txt").read_text().splitlines()
    pins = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return [pin for pin in pins if not pin.lower().startswith(("pytest", "optuna", "keras-tuner", "tensorboard",
                                                                "seaborn", "streamlit", "selenium"))]


def log_captioner(bundle_dir: Path, name: str = "model"):
    """Log a saved captioner bundle as a pyfunc model in the active run; returns MLflow's ModelInfo."""
    from mlflow.models import infer_signature

    signature = infer_signature(pd.DataFrame({"image": ["photo.jpg"]}), pd.DataFrame({"caption": ["a dog"]}),
                                params={"beam_width": 0})  # 0: the model's own beam width
    return mlflow.pyfunc.log_model(name=name, python_model=CaptionerModel(),
                                   artifacts={"captioner": str(bundle_dir)},
                                   code_paths=[str(PROJECT / "captioning")], signature=signature,
                                   pip_requirements=pip_requirements())


def resolve_tracking_uri(cli_uri: str | None = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else MLflow's default database in the project directory."""
    import os

    import mlflow

    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return uri


def redact(url: str) -> str:
    """A database or server URL with its password hidden, for logs, reports and pages."""
    from sqlalchemy.engine import make_url

    if "@" not in url:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a database URL (e.g. http://user:pw@host): drop the credentials
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rsplit('@', 1)[-1]}"


def password_warning(option: str, url: str | None) -> str | None:
    """One line for a URL given as a command-line option with a password in it (in its user part or a
    `password=` parameter), which every user of the machine can read in the process list; None otherwise."""
    from urllib.parse import parse_qs, urlsplit

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


class ModelNotFound(LookupError):
    """A registered model name, alias or version that does not exist."""


def _registry_listing() -> str:
    from mlflow import MlflowClient

    names = []
    for model in MlflowClient().search_registered_models():
        aliases = ", ".join(f"@{alias}" for alias in sorted(model.aliases or {}))
        names.append(f"{model.name} ({aliases or 'no aliases'})")
    return "; ".join(names) or "none (run: python tuning/search.py)"


def download_bundle(model_uri: str) -> Path:
    """The captioner bundle inside an MLflow model: models:/NAME@ALIAS, models:/NAME/VERSION, a logged model's
    models:/m-<id> (what each trial's `model_uri` tag holds) or runs:/ID/model."""
    import mlflow
    from mlflow.exceptions import MlflowException

    logged = re.match(r"models:/(m-[0-9a-f]{32})(/|$)", model_uri)  # a logged model's id, not a registered name
    if model_uri.startswith("models:/") and not logged:
        from mlflow import MlflowClient

        reference = model_uri[len("models:/"):]
        name, _, alias = reference.partition("@")
        try:
            if alias:
                MlflowClient().get_model_version_by_alias(name, alias)
            else:
                MlflowClient().get_registered_model(name.split("/")[0])
        except MlflowException:
            raise ModelNotFound(f"no registered model {model_uri} in {mlflow.get_tracking_uri()}; registered: "
                                f"{_registry_listing()}") from None
    location = model_uri.rstrip("/")
    try:
        if logged:  # its files live at the logged model's location
            location = mlflow.get_logged_model(logged.group(1)).artifact_location
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/artifacts/captioner"))
    except (MlflowException, OSError) as exc:
        raise ModelNotFound(f"cannot fetch the captioner in {model_uri}: {exc}") from None
    return local
