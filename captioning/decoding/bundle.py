"""The captioner bundle on disk: which files make one, and loading its Keras decoders safely (no Lambda layers, Keras
safe mode), so that a bundle from elsewhere runs no code of its own."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

FILES = ("config.json", "vocab.json", "decoder.keras")


class BundleError(FileNotFoundError):
    """A directory that is not a complete captioner bundle, or one whose decoder is not safe to load."""


def _layer_classes(keras_file: Path) -> set[str]:
    """The class names in a .keras file's model config, read as JSON without building anything."""
    try:
        with zipfile.ZipFile(keras_file) as archive:
            nodes = [json.loads(archive.read("config.json"))]
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise BundleError(f"{keras_file} is not a Keras model file ({exc}); retrain it with python -m captioning "
                          "train") from None
    names = set()
    while nodes:
        node = nodes.pop()
        if isinstance(node, dict):
            names.add(node.get("class_name"))
            nodes.extend(node.values())
        elif isinstance(node, list):
            nodes.extend(node)
    return names


def load_decoder(decoder: Path):
    """The Keras model in a .keras file, loaded in safe mode (Keras imported here: BundleError alone needs none)."""
    import keras

    if "Lambda" in _layer_classes(decoder):
        raise BundleError(f"{decoder} holds a Lambda layer, which is Python code that loading would run; this "
                          "project loads decoders made of Keras's and its own layers only: retrain it with "
                          "python -m captioning train")
    try:
        return keras.saving.load_model(decoder, compile=False, safe_mode=True)
    except (ValueError, TypeError) as exc:  # Keras's safe mode refusing something, or an unknown layer class
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{decoder} cannot be loaded in Keras safe mode ({reason}); retrain it with "
                          "python -m captioning train") from None
