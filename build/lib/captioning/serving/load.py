"""A captioner by reference: a bundle directory, or an MLflow address (models:/NAME@ALIAS, models:/NAME/VERSION, a
logged model's models:/m-<id>, runs:/ID/model), MLflow imported only for an address."""
from __future__ import annotations

from pathlib import Path

from captioning.decoding.captioner import Captioner


def load_captioner(reference: str) -> Captioner:
    """A captioner from a bundle directory or a models:/ or runs:/ URI (in the tracking store already set)."""
    if reference.startswith(("models:/", "runs:/")):
        from captioning.serving.mlflow_model import download_bundle  # MLflow only for an MLflow address

        return Captioner.load(download_bundle(reference))
    return Captioner.load(Path(reference))
