"""The captioner as an MLflow model: logging it, finding it in the registry, and loading it without unpickling.

A logged captioner is "models from code": its code is captioning/serving/pyfunc_model.py (with the `captioning`
package as code_paths) and its one artifact, `captioner`, the bundle (config, vocabulary, decoder); nothing is
pickled. Versions logged before that hold a pickled wrapper (python_model.pkl): `load_model` refuses them and says how
to re-log them, and `relog_captioner` does it. The project's own readers (the app, `python -m captioning ... --model
models:/...`, reports) read only the bundle, so they take old and new versions alike. A trial's logged model is the
bundle alone (a few MB: the encoder weights are resolved offline by name where it is used); a registered version is
logged again with the bundle's inference export (`log_with_export`: the decoders and Xception as OpenVINO IR, about
80 MB with Xception), so that it is served, captioned with and drawn from without TensorFlow.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

PACKAGE = Path(__file__).resolve().parents[1]  # captioning/, logged with every model as its code
MODEL_CODE = Path(__file__).resolve().with_name("pyfunc_model.py")
# MLflow unpickles a pickled pyfunc wrapper unless told not to: in this project's processes it is told not to.
os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")


class PickledModelError(ValueError):
    """A logged captioner from before models from code, whose wrapper would have to be unpickled to load it."""


# What a version logged with its inference export imports where it is served (captioning.inference: no TensorFlow,
# Keras, NLTK or the COCO scorers), by distribution name as requirements/library.txt pins them.
INFERENCE_DISTRIBUTIONS = ("mlflow", "openvino", "numpy", "pillow", "pyyaml", "tqdm", "pandas")


def pip_requirements(inference_only: bool = False) -> list[str]:
    """The library's pinned requirements (requirements/library.txt: MLflow included, no search, app or test
    packages), for the logged model's environment; from the installed distribution's metadata when the package is
    not run from its source folder. `inference_only`: those of INFERENCE_DISTRIBUTIONS alone, for a model that
    decodes with its export."""
    source = PACKAGE.parent / "requirements" / "library.txt"
    if source.is_file():
        lines = source.read_text().splitlines()
        pins = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    else:
        from importlib.metadata import requires

        pins = [req for req in requires("captioning-workbench") or [] if "extra ==" not in req]
    if not inference_only:
        return pins
    kept = [pin for pin in pins if re.split(r"[\[=<>!~; ]", pin, maxsplit=1)[0].lower() in INFERENCE_DISTRIBUTIONS]
    if len(kept) != len(INFERENCE_DISTRIBUTIONS):
        raise RuntimeError(f"requirements/library.txt pins {kept}, not all of {INFERENCE_DISTRIBUTIONS}")
    return kept


def log_captioner(bundle_dir: Path, name: str = "model", inference_only: bool = False):
    """Log a saved captioner bundle as a pyfunc model (models from code) in the active run; returns MLflow's
    ModelInfo. `inference_only`: the bundle decodes with its export, so its environment needs no TensorFlow."""
    from mlflow.models import infer_signature

    signature = infer_signature(pd.DataFrame({"image": ["/9j/4AAQSkZJRg=="]}), pd.DataFrame({"caption": ["a dog"]}),
                                params={"beam_width": 0})  # base64 image bytes; 0: the model's own beam width
    return mlflow.pyfunc.log_model(name=name, python_model=str(MODEL_CODE),
                                   artifacts={"captioner": str(bundle_dir)},
                                   code_paths=[str(PACKAGE)], signature=signature,
                                   pip_requirements=pip_requirements(inference_only))


def log_with_export(model_uri: str, run_id: str, log=print) -> str:
    """The captioner at `model_uri` logged again, in run `run_id`, with its inference export (captioning.inference);
    the new model's URI, or `model_uri` itself where the captioner cannot be exported (said in one line)."""
    import contextlib
    import shutil
    import tempfile

    from captioning.decoding.captioner import Captioner
    from captioning.inference import ExportError
    from captioning.inference.export import export_captioner

    with tempfile.TemporaryDirectory(prefix="captioner-export-") as tmp:
        bundle = Path(tmp) / "captioner"
        shutil.copytree(download_bundle(model_uri), bundle)
        try:
            export_captioner(Captioner.load(bundle, use_export=False), bundle, log=lambda line: None)
        except ExportError as exc:
            log(f"registry: {exc}; registering {model_uri} without an inference export")
            return model_uri
        active = mlflow.active_run()
        same = active is not None and active.info.run_id == run_id
        with contextlib.nullcontext() if same else mlflow.start_run(run_id=run_id, nested=active is not None):
            return log_captioner(bundle, name="exported", inference_only=True).model_uri


def _logged_as_code(model_uri: str) -> bool:
    """Whether the model at `model_uri` is models from code, read from its MLmodel file alone (nothing is loaded)."""
    from mlflow.exceptions import MlflowException
    from mlflow.models import get_model_info

    try:
        return "model_code_path" in get_model_info(model_uri).flavors.get("python_function", {})
    except (MlflowException, OSError) as exc:
        raise ModelNotFound(f"cannot read the model {model_uri}: {exc}") from None


def load_model(model_uri: str):
    """The logged captioner at `model_uri` as a pyfunc model; one with a pickled wrapper is refused, not unpickled."""
    if not _logged_as_code(model_uri):
        raise PickledModelError(f"{model_uri} was logged with a pickled Python wrapper (python_model.pkl), which this "
                                "project does not unpickle (it would run whatever code was written to the registry); "
                                f"re-log its captioner without one: python -m captioning relog {model_uri}")
    return mlflow.pyfunc.load_model(model_uri)


def relog_captioner(model_uri: str):
    """Register the captioner of models:/NAME/VERSION or models:/NAME@ALIAS again, as models from code: a new version
    of NAME with the old version's tags, logged in the old version's run. Returns (old version, new version), with no
    new version when the old one is already code; aliases stay where they are."""
    from mlflow import MlflowClient

    found = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@(\w[\w-]*))", model_uri)
    if not found:
        raise ModelNotFound(f"{model_uri} does not name a registered version; give models:/NAME/VERSION or "
                            "models:/NAME@ALIAS")
    bundle = download_bundle(model_uri)  # data only: JSON files and the .keras decoder (a missing model stops here)
    name, number, alias = found.groups()
    client = MlflowClient()
    old = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)
    if _logged_as_code(model_uri):
        return old, None
    with mlflow.start_run(run_id=old.run_id) if old.run_id else mlflow.start_run():
        info = log_captioner(bundle)
    tags = {key: value for key, value in old.tags.items() if key != "promotion"}  # the new version was not promoted
    return old, mlflow.register_model(info.model_uri, name, tags={**tags, "relogged_from": old.version})


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
