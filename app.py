"""Caption a photo with a registered captioner: upload an image, pick a model version and a decoding, read the caption.

Run it from the project directory, once `python tuning/search.py` has registered a model:

    .venv/bin/streamlit run app.py

The registry is the one at $MLFLOW_TRACKING_URI, else ./mlflow.db (where it runs); the model name is
$CAPTIONER_MODEL_NAME (default `captioner`). When `mlflow ui` answers at $MLFLOW_UI_URL (default
http://127.0.0.1:5000), the run the model came from is linked to it.
"""
from __future__ import annotations

import math
import os
import urllib.request

import mlflow
import numpy as np
import pandas as pd
import streamlit as st
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from PIL import Image

from captioning.config import ConfigError
from captioning.core.names import check_name, quote
from captioning.core.tracking import redact, resolve_tracking_uri
from captioning.data.images import ImageError, TooManyPixels, load_rgb
from captioning.decoding.bundle import BundleError
from captioning.decoding.captioner import Captioner
from captioning.decoding.spotlight import spotlight
from captioning.serving.mlflow_model import ModelNotFound, download_bundle

MAX_UPLOAD_MB = 20
IMAGE_TYPES = ["jpg", "jpeg", "png", "webp"]
SEARCH_COMMAND = "python tuning/search.py"


def model_choices(name: str) -> dict[str, str]:
    """Label -> versioned model URI for each alias (champion first) and each version (newest first) of `name`."""
    client = MlflowClient()
    if not client.search_registered_models(f"name = {quote(name)}"):
        return {}
    aliases = client.get_registered_model(name).aliases  # alias -> version
    versions = sorted((int(v.version) for v in client.search_model_versions(f"name = {quote(name)}")), reverse=True)
    choices = {f"@{alias} (version {version})": f"models:/{name}/{version}"
               for alias, version in sorted(aliases.items(), key=lambda item: (item[0] != "champion", item[0]))}
    choices.update({f"version {version}": f"models:/{name}/{version}" for version in versions})
    return choices


@st.cache_resource(show_spinner="Loading the model...", max_entries=4)
def load_captioner(tracking_uri: str, model_uri: str) -> Captioner:
    # Keyed on a versioned URI (an alias can move) and on the registry, so two registries never share an entry.
    return Captioner.load(download_bundle(model_uri))


@st.cache_data(ttl=30, show_spinner=False)
def mlflow_ui_running(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5):
            return True
    except (OSError, ValueError):
        return False


def bleu_table(metrics: dict[str, float], beam_width: int) -> pd.DataFrame:
    decodings = ((f"beam {beam_width}", ""), ("greedy", "greedy_"))
    rows = {f"{split}, {decoding}": [metrics.get(f"{split}_{infix}bleu{n}", math.nan) for n in range(1, 5)]
            for split in ("dev", "test") for decoding, infix in decodings}
    return pd.DataFrame(rows, index=[f"BLEU-{n}" for n in range(1, 5)]).T.dropna(how="all")


def show_model_card(name: str, model_uri: str, captioner: Captioner) -> None:
    """BLEU of the run the model came from, the version's tags, and a link to that run in the MLflow UI."""
    client = MlflowClient()
    model_version = client.get_model_version(name, model_uri.rsplit("/", 1)[1])
    scores, about = st.columns([3, 2])
    about.caption(f"Tags of version {model_version.version}")
    about.table(pd.Series(model_version.tags, name="value", dtype=str), hide_header=True)
    try:
        run = client.get_run(model_version.run_id)
    except MlflowException:
        scores.warning(f"Run {model_version.run_id}, where this version came from, is no longer in the database.")
        return
    scores.caption("BLEU of the run it came from")
    scores.table(bleu_table(run.data.metrics, captioner.config.beam_width).style.format("{:.3f}", na_rep="-"))
    ui_url = os.environ.get("MLFLOW_UI_URL", "http://127.0.0.1:5000").rstrip("/")
    title = run.info.run_name or run.info.run_id
    if mlflow_ui_running(ui_url):
        scores.markdown(f"Run [{title}]({ui_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}) "
                        "in the MLflow UI")
    else:
        scores.markdown(f"Run `{title}` (start `mlflow ui` to browse it)")
    scores.caption(f"`{model_uri}` in `{redact(mlflow.get_tracking_uri())}`")


def show_caption(captioner: Captioner, name: str, data: bytes, beam_width: int) -> None:
    """The uploaded image beside its caption (and, for beam search, the other beams with their scores)."""
    if len(data) > MAX_UPLOAD_MB * 2**20:
        st.error(f"{name} is {len(data) / 2**20:.1f} MB; this app takes images up to {MAX_UPLOAD_MB} MB.")
        return
    try:
        rgb = load_rgb(data)
    except TooManyPixels:  # Pillow's guard against images with absurd pixel counts
        st.error(f"{name} has more pixels than this app reads ({2 * Image.MAX_IMAGE_PIXELS:,}); upload a smaller one.")
        return
    except ImageError:
        st.error(f"{name} is not an image this app can read; upload a JPEG, PNG or WebP photo.")
        return
    with st.spinner("Captioning..."):
        inputs = captioner.encode_images([rgb])
        found = captioner.decode_features(inputs, beam_width, with_attention=True)
        alternatives, attention = found if captioner.has_attention else (found, [None])
        alternatives = alternatives[0]
    picture, text = st.columns(2)
    preview = Image.fromarray(rgb)
    preview.thumbnail((1024, 1024))  # a 50-megapixel photo need not travel to the browser at full size
    picture.image(preview, caption=f"{name} ({rgb.shape[1]} x {rgb.shape[0]})", width="stretch")
    text.subheader(alternatives[0][0] or "(empty caption)")
    if len(alternatives) > 1 or not math.isnan(alternatives[0][1]):
        beam_score = f"log-probability / length^{captioner.config.length_penalty:g}"
        if captioner.config.rerank_neighbours:
            weight = captioner.config.rerank_weight
            beam_score = (f"{weight:g} x consensus with the {captioner.config.rerank_neighbours} nearest training "
                          f"images + {1 - weight:g} x {beam_score}")
        text.caption(f"Beam search, width {beam_width}; score = {beam_score}, higher is better")
        beams = pd.DataFrame(alternatives, columns=["caption", "score"])
        text.table(beams.style.format({"score": "{:.3f}"}), hide_index=True)
    else:
        text.caption("Greedy decoding")
    show_attention(rgb, alternatives[0][0], attention[0])


def show_attention(rgb, caption: str, attention) -> None:
    """Where the decoder looked for each word of the caption: a strip of small spotlights under it."""
    st.markdown("**Where the model looked, word by word**")
    if attention is None:
        st.caption("This model has no attention maps: it is a merge decoder, which sees the image as one pooled "
                   "vector. Models trained with `decoder: attention` show a map per word here.")
        return
    words = caption.split()
    side = int(round(np.sqrt(attention.shape[1])))
    maps = [spotlight(rgb, weights.reshape(side, side), size=128) for weights in attention[:len(words)]]
    st.image(maps, caption=words, width=128)


st.set_page_config(page_title="Image captioner", layout="wide")
st.title("Image captioner")
tracking_uri = redact(resolve_tracking_uri())  # shown on the page, so without a password
model_name = os.environ.get("CAPTIONER_MODEL_NAME", "captioner")
if not st.get_option("server.address"):  # no .streamlit/config.toml beside the app or where it was started
    st.warning("This page listens on every network interface: keep the project's `.streamlit/config.toml` beside "
               "app.py (it keeps the page on 127.0.0.1) or start it with `--server.address 127.0.0.1`.")
try:
    choices = model_choices(check_name(model_name, "$CAPTIONER_MODEL_NAME", "captioner"))
except ConfigError as exc:
    st.error(str(exc))
    st.stop()
except MlflowException as exc:
    st.error(f"Cannot read the model registry at {tracking_uri}: {exc.message}")
    st.stop()
if not choices:
    st.info(f"No model named `{model_name}` is registered in `{tracking_uri}` yet. Make one by running "
            f"`{SEARCH_COMMAND}` in the project directory (it registers the best trial as `{model_name}@champion`).")
    st.stop()

with st.sidebar:
    st.header("Model")
    label = st.selectbox("Registered model", list(choices), help=f"Aliases and versions of `{model_name}`")
    model_uri = choices[label]
    try:
        captioner = load_captioner(tracking_uri, model_uri)
    except (ModelNotFound, BundleError) as exc:
        st.error(str(exc))
        st.stop()
    decoding = st.radio("Decoding", ["beam search", "greedy"], horizontal=True)
    beam_width = 1
    if decoding == "beam search":
        beam_width = st.slider("Beam width", 2, 10, max(2, captioner.config.beam_width))

upload = st.file_uploader(f"A photo (JPEG, PNG or WebP, up to {MAX_UPLOAD_MB} MB)", type=IMAGE_TYPES,
                          max_upload_size=MAX_UPLOAD_MB)
if upload is None:
    st.info("Upload a photo to caption it.")
else:
    show_caption(captioner, upload.name, upload.getvalue(), beam_width)

st.divider()
st.subheader(f"Model {label}")
show_model_card(model_name, model_uri, captioner)
