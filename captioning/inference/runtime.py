"""A captioner's export (see captioning.inference) read for decoding, with OpenVINO and NumPy only: this module
imports neither TensorFlow nor Keras (tests/test_export.py decodes with both blocked from import).

`ExportedStepDecoder` is the StepDecoder protocol (captioning.models.base) over a decoder's converted start and step,
on NumPy arrays, so that the package's greedy and beam search (captioning.decoding.search) and its ensemble
(captioning.models.ensemble) decode it unchanged. `read_export` gives the decoder (an ensemble when the bundle holds
several) and, per feature group, the encoders that turn images into what the decoders read
(captioning.features.numpy_encoding, with the IR of Xception or of its entry flow for their maps). Everything runs in
float32; an encoder whose config asks for OpenVINO in bf16 runs in bf16 where the CPU has it, as when it was trained.

Compiling the IR for the CPU is most of a cold start's time after the imports (Xception's most of all), so the
compiled graphs are kept in OpenVINO's model cache, <cache>/openvino/compiled, which it keys by the IR file and the
compile settings itself: a second process loads them instead of compiling.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from captioning.config import Config, from_dict
from captioning.core.cache import cache_root
from captioning.features import numpy_encoding
from captioning.features.numpy_encoding import ArrayEncoder
from captioning.inference import FOLDER, FORMAT, MANIFEST, ExportError, source_hashes
from captioning.models.ensemble import EnsembleStepDecoder



def compile_ir(core, xml: Path, precision: str = "f32"):
    """The IR file compiled for the CPU in `precision` (asked for always: OpenVINO's default on a bf16 CPU is bf16),
    through OpenVINO's model cache."""
    from captioning.features.openvino_runtime import precision_hint

    settings = {"INFERENCE_PRECISION_HINT": precision_hint(precision),
                "CACHE_DIR": str(cache_root() / "openvino" / "compiled")}
    return core.compile_model(str(xml), "CPU", settings)


class ExportedStepDecoder:
    """One exported decoder's start and step, compiled for the CPU (one inference request per thread and graph, so
    that one decoder serves several threads, as the app's and the server's do)."""

    signature = training_signature = None  # (decoded, never trained)

    def __init__(self, core, directory: Path, entry: dict, vocabulary: int, start_id: int, end_id: int):
        self.has_attention, self.reads_maps = bool(entry["has_attention"]), bool(entry["reads_maps"])
        self.context_count, self.state_count = int(entry["context_count"]), int(entry["state_count"])
        self.start_id, self.end_id = start_id, end_id
        self.banned = np.zeros(vocabulary, np.float32)
        self.banned[entry["banned"]] = -np.inf
        self._compiled = {part: compile_ir(core, directory / entry[part]) for part in ("start", "step")}
        self._requests = threading.local()

    def _infer(self, part: str, inputs: list) -> tuple:
        requests = self._requests.__dict__
        if part not in requests:
            requests[part] = self._compiled[part].create_infer_request()
        return requests[part].infer(inputs).to_tuple()  # (copies: the request's buffers are reused)

    def start(self, inputs) -> tuple[tuple[np.ndarray, ...], list[np.ndarray]]:
        """Per-image context and initial states of feature vectors (or ImageInputs, whose maps it reads if it reads
        maps)."""
        features = np.asarray(getattr(inputs, "features", inputs), np.float32)
        feeds = [features]
        if self.reads_maps:
            maps = inputs.maps.read() if hasattr(inputs.maps, "read") else np.asarray(inputs.maps, np.float32)
            feeds.append(maps.reshape(len(maps), -1, maps.shape[-1]))
        out = self._infer("start", feeds)
        return tuple(out[:self.context_count]), list(out[self.context_count:])

    def _step(self, tokens, states, context, k: int):
        out = self._infer("step", [np.asarray(tokens, np.int32), *states, *context, np.array(k, np.int32)])
        new_states = list(out[2:2 + self.state_count])
        alpha = out[2 + self.state_count] if self.has_attention else None
        return out[0], out[1], new_states, alpha, out[-1]

    def step(self, tokens, states, context, with_attention: bool = False):
        """Log-probabilities of the next word (rows, vocab) and the new states (and the attention weights)."""
        _, _, new_states, alpha, logp = self._step(tokens, states, context, 1)
        return (logp, new_states, alpha) if with_attention else (logp, new_states)

    def step_top(self, tokens, states, context, k: int, with_attention: bool = False):
        """The k most likely next words' log-probabilities and ids (rows, k), best first, and the new states."""
        values, ids, new_states, alpha, _ = self._step(tokens, states, context, k)
        return (values, ids, new_states, alpha) if with_attention else (values, ids, new_states)

    def graph_step(self, tokens, states, context):
        raise TypeError("an exported decoder decodes only: self-critical training runs on the bundle's Keras decoder")

    def training_inputs(self, inputs, owner, tokens):
        raise TypeError("an exported decoder decodes only: train or fine-tune the bundle's Keras decoder")


class _LazyNetwork:
    """An encoder's network's IR (Xception's, or its entry flow's), compiled when first called (decoding cached
    features never needs it), one call at a time: a float32 batch (B, S, S, 3) -> its maps (B, h, w, c), float32."""

    def __init__(self, core, xml: Path, precision: str):
        self.core, self.xml, self.precision = core, xml, precision
        self._request = None
        self._lock = threading.Lock()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        with self._lock:
            if self._request is None:
                self._request = compile_ir(self.core, self.xml, self.precision).create_infer_request()
            self._request.infer({0: np.ascontiguousarray(images, dtype=np.float32)})
            return self._request.get_output_tensor(0).data.astype(np.float32, copy=True)  # (the buffer is reused)


class Export:
    """A bundle's export, read: `decoder` (a StepDecoder), `groups` (the feature groups' configs, as the Captioner's
    feature_groups) and their encoders (encoder_for)."""

    def __init__(self, directory: Path, decoder, groups: list[Config], encoders: dict[tuple[int, bool], ArrayEncoder]):
        self.directory, self.decoder, self.groups, self._encoders = directory, decoder, groups, encoders

    def encoder_for(self, config: Config, mirrored: bool = False) -> ArrayEncoder:
        """The encoder of the feature group `config` (one of `groups`)."""
        if config not in self.groups:
            raise ExportError(f"the export in {self.directory} has no encoder for the features of {config.encoder} "
                              f"{config.image_size}px grid {config.feature_grid}: export the bundle again")
        return self._encoders[(self.groups.index(config), mirrored)]


def read_export(bundle: Path) -> Export | None:
    """The export in bundle/export, or None where there is none; ExportError where it is of another format, made from
    other decoder files (a stale export) or damaged."""
    directory = Path(bundle) / FOLDER
    if not (directory / MANIFEST).is_file():
        return None
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {directory / MANIFEST} ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise ExportError(f"{directory} is an export of format {manifest.get('format')}, this version reads {FORMAT}")
    if manifest["sources"] != source_hashes(bundle):
        raise ExportError(f"{directory} was made from other decoder or vocabulary files than the bundle's now")
    ours = {"preprocessing": numpy_encoding.PREPROCESSING, "colour_version": numpy_encoding.COLOUR_VERSION}
    if any(manifest[key] != value for key, value in ours.items()):
        raise ExportError(f"{directory} was made for other image preprocessing ({manifest['preprocessing']}, colour "
                          f"{manifest['colour_version']}) than this version's")
    from captioning.features.openvino_runtime import import_openvino

    core = import_openvino().Core()
    try:
        members = [ExportedStepDecoder(core, directory, entry, manifest["vocabulary"], manifest["start_id"],
                                       manifest["end_id"]) for entry in manifest["decoders"]]
    except RuntimeError as exc:  # OpenVINO's error for a missing or damaged IR file
        raise ExportError(f"cannot read the IR in {directory} ({str(exc).strip().splitlines()[0]})") from None
    parts = [entry["part"] for entry in manifest["decoders"]]
    decoder = members[0] if len(members) == 1 else EnsembleStepDecoder(members, parts if max(parts) > 0 else None)
    groups = [from_dict(entry["config"]) for entry in manifest["groups"]]
    return Export(directory, decoder, groups, _encoders(core, directory, manifest["groups"], groups))


def _encoders(core, directory: Path, entries: list[dict], groups: list[Config]) -> dict[tuple[int, bool], ArrayEncoder]:
    """Each feature group's plain and mirrored encoder (sharing one network per IR file)."""
    networks, out = {}, {}
    for index, (entry, config) in enumerate(zip(entries, groups)):
        network = None
        if entry["network"] is not None:
            precision = "f32"
            if config.encoder_runtime == "openvino":  # as its features were computed
                from captioning.features.openvino_runtime import inference_precision

                precision = inference_precision(config.inference_precision)
            network = networks.setdefault((entry["network"], precision),
                                          _LazyNetwork(core, directory / entry["network"], precision))
        for mirrored, key in ((False, entry["key"]), (True, entry["mirrored_key"])):
            out[(index, mirrored)] = ArrayEncoder(config.encoder, config.image_size, config.feature_grid,
                                                  config.colour_grid, mirrored, key, network)
    return out
