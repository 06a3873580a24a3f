"""Inference without TensorFlow: a captioner bundle exported as OpenVINO IR (export.py, which imports TensorFlow to
convert) and decoded by OpenVINO and NumPy (runtime.py, which imports neither TensorFlow nor Keras). The greedy and
beam search, consensus re-ranking and attention maps are the package's own (captioning.decoding), on NumPy arrays.

    <bundle>/export/
      manifest.json                     what was exported, and the hashes of the bundle files it was made from
      decoder-0-start.xml, .bin         per decoder (an ensemble's members: decoder-1, ...): its start, features
                                        (and maps) -> context and initial states
      decoder-0-step.xml, .bin          its step, with the top k inside: tokens, states, context, k -> the k best
                                        log-probabilities and ids, the new states, the attention weights (if any)
                                        and the log-probabilities
      encoder-<IR key>.xml, .bin        the encoder's network, for captioners of Xception features: Xception
                                        (xception) or its entry flow (xception-entry)

Images are read, resized and pooled by captioning.features.numpy_encoding. A bundle whose decoders or vocabulary
changed after its export (other hashes) is decoded through Keras until exported again.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

FOLDER = "export"
MANIFEST = "manifest.json"
FORMAT = 1  # bumped when the layout changes: an export of another format is not read


class ExportError(ValueError):
    """A captioner that cannot be exported, or an export that cannot be read."""


def source_hashes(bundle: Path) -> dict[str, str]:
    """The sha256 of each bundle file an export is made from: the decoders and the vocabulary."""
    bundle = Path(bundle)
    files = sorted([*bundle.glob("decoder*.keras"), bundle / "vocab.json"])
    return {path.name: _file_hash(path) for path in files if path.is_file()}


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
