"""The OpenVINO runtime of an encoder (`encoder_runtime: openvino`): its Keras network converted once with
`openvino.convert_model`, kept as IR under the cache root, and compiled for the CPU in the precision asked for.

    <cache>/openvino/<ir key>/model.xml, model.bin   the IR, float32 weights (never compressed to float16)
    <cache>/openvino/<ir key>.lock                     held while a process converts

The IR key names the network, its weights' checksum, the input size and the versions of Keras (it builds the graph
that is converted) and of OpenVINO, so an upgrade of either converts again. The IR is written into a temporary
folder that is renamed into place when complete, under the lock: a reader sees the whole IR or none, and two
processes that start together convert once. A run that finds the IR reads it without TensorFlow or Keras.

`inference_precision: int8` runs the network quantized by NNCF (post-training, its MIXED preset: symmetric weights,
asymmetric activations), calibrated once on CALIBRATION_IMAGES images of the first dataset whose features are
extracted in int8 (its training split, spread over it), kept beside the IR:

    <cache>/openvino/<ir key>-int8/model.xml, model.bin, quantization.json   (what calibrated it, its checksum)

The int8 network's checksum enters the feature cache keys, so features of two calibrations never mix. What is not
quantized runs in f32. Without the folder and without calibration images (a captioner used on another machine through
Keras), it says how to get it; a registered captioner's export carries its int8 network.

`inference_precision: bf16` runs in bfloat16 only where the CPU computes it natively (AVX512_BF16 or AMX, as
/proc/cpuinfo or OpenVINO's CPU capabilities say); elsewhere it says so once and runs float32. OpenVINO's own default
on a bf16 CPU is bf16, so the precision is always asked for explicitly (INFERENCE_PRECISION_HINT).

OpenVINO's Python package reports its import and every conversion to Google Analytics unless the user has opted out
(`opt_in_out --opt_out`, a file in the home folder), each event from a forked process that it waits up to 3 s for:
15 forks of a process running TensorFlow, and 4 of a tiny model's 5 s of conversion here. It skips that in CI jobs,
which it knows by CI=true, so import_openvino() and the conversion set that while OpenVINO reads it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from captioning.core.cache import cache_root
from captioning.core.errors import ConfigError
from captioning.core.locks import FileLock

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo's names of native bfloat16 arithmetic
IR_FILE = "model.xml"  # (its weights: model.bin beside it)
QUANTIZATION_FILE = "quantization.json"  # beside an int8 IR: its checksum and what calibrated it
CALIBRATION_IMAGES = 300  # NNCF's default subset size
INT8_SUFFIX = "-int8"  # the int8 IR's folder: the f32 IR's key and this
_said: set[str] = set()  # the precisions whose fallback was announced in this process


@contextlib.contextmanager
def _telemetry_declined():
    before = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = before


def import_openvino():
    """The openvino module, imported without its telemetry (see above)."""
    with _telemetry_declined():
        import openvino

    return openvino


def cpu_flags() -> set[str]:
    """The first CPU's flags in /proc/cpuinfo (none where there is no such file, as on macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def openvino_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin says this CPU can do (FP32, INT8, BF16, ...)."""
    return list(import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def native_bf16(flags: set[str] | None = None, capabilities: list[str] | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (given flags and capabilities: whether such a CPU does)."""
    flags = cpu_flags() if flags is None else flags
    if any(flag in flags for flag in BF16_FLAGS):
        return True
    return "BF16" in (openvino_capabilities() if capabilities is None else capabilities)


@functools.lru_cache(maxsize=None)
def _native_bf16_here() -> bool:
    return native_bf16()


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What an int8 quantization calibrates on: `source` says what the images are (kept in quantization.json), and
    `images()` yields them preprocessed, one (1, S, S, 3) float32 array each."""

    source: str
    images: Callable[[], Iterable[np.ndarray]]


def precision_hint(precision: str) -> str:
    """OpenVINO's INFERENCE_PRECISION_HINT for a precision: an int8 network's unquantized operations run in f32."""
    return "f32" if precision == "int8" else precision


def inference_precision(requested: str, log: Callable[[str], None] = print) -> str:
    """The precision the encoder runs in: `requested`, but float32 where bf16 is not native here (said once);
    int8 runs everywhere (fastest with AVX512_VNNI or AVX-VNNI)."""
    if requested != "bf16" or _native_bf16_here():
        return requested
    if requested not in _said:
        _said.add(requested)
        log("inference_precision bf16: this CPU has no native bfloat16 (no AVX512_BF16 or AMX), so the OpenVINO "
            "encoder runs in f32 (and its features are cached as f32)")
    return "f32"


def ir_key(name: str, weights_id: str, image_size: int) -> str:
    """Identifies a converted network: same key, same IR."""
    versions = f"keras-{importlib.metadata.version('keras')}|openvino-{importlib.metadata.version('openvino')}"
    text = f"{name}|{weights_id}|{image_size}|{versions}"
    return f"{name}-{image_size}px-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def converted_ir(key: str, build: Callable[[], Any], log: Callable[[str], None] = print) -> Path:
    """The IR of `key` under the cache root; converted from the Keras model that build() returns if not there."""
    directory = cache_root() / "openvino" / key
    if (directory / IR_FILE).is_file():  # a complete IR: only a finished conversion renames its folder here
        return directory / IR_FILE
    with FileLock(directory.with_name(key + ".lock"),
                  say=f"waiting for another process converting the encoder to OpenVINO ({key})", log=log):
        if not (directory / IR_FILE).is_file():
            log(f"converting the encoder to OpenVINO IR once ({key}; cached in {directory.parent})")
            _convert(build(), directory)
    return directory / IR_FILE


def _convert(model: Any, directory: Path) -> None:
    """Convert the Keras model and rename its IR into `directory` (the caller holds the lock)."""
    ov = import_openvino()
    with warnings.catch_warnings(), _telemetry_declined():
        # Keras 3 warns that the converter's tracing call passes its one input as a tuple; the graph is the same.
        warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")
        network = ov.convert_model(model)
    # compress_to_fp16 (the default) would round the weights to float16: f32 maps would then differ from Keras'.
    _install(directory, lambda staging: ov.save_model(network, staging / IR_FILE, compress_to_fp16=False))


def _install(directory: Path, write: Callable[[Path], None]) -> None:
    """Fill `directory` by write(staging) into a temporary folder beside it, then rename that into place, replacing
    a folder there (damaged, or left in part): a reader sees the whole folder or none. The caller holds its lock."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        write(staging)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _int8_directory(key: str) -> Path:
    """Where the int8 IR of `key`'s network is kept (an export names its copy after this folder)."""
    return cache_root() / "openvino" / f"{key}{INT8_SUFFIX}"


def _weights_checksum(xml: Path) -> str:
    """An IR's checksum: of its weights file."""
    return hashlib.sha256(xml.with_suffix(".bin").read_bytes()).hexdigest()[:12]


class CompiledIR:
    """An IR compiled for the CPU in one precision: called with a float32 batch (B, S, S, 3), it returns the
    outputs (B, h, w, c) as float32."""

    def __init__(self, xml: Path, precision: str):
        core = import_openvino().Core()
        self.compiled = core.compile_model(core.read_model(xml), "CPU",
                                           {"INFERENCE_PRECISION_HINT": precision_hint(precision)})
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.request = self.compiled.create_infer_request()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(images, dtype=np.float32)})
        return self.request.get_output_tensor(0).data.astype(np.float32, copy=True)  # (the buffer is reused)


def compiled_ir(key: str, build: Callable[[], Any], precision: str, log: Callable[[str], None] = print,
                calibration: Calibration | None = None) -> CompiledIR:
    """The IR of `key` (converted once, see converted_ir) compiled for the CPU in `precision` (f32, bf16, or int8:
    quantized once, see quantized_ir)."""
    if precision == "int8":
        xml, _ = quantized_ir(key, build, calibration, log)
        try:
            return CompiledIR(xml, precision)
        except RuntimeError as exc:
            raise ConfigError(f"the cached int8 encoder {xml.parent} does not read ({str(exc).splitlines()[0]}); "
                              "delete that folder to quantize it again (its features' cache keys change)") from None
    xml = converted_ir(key, build, log)
    try:
        return CompiledIR(xml, precision)
    except RuntimeError as exc:  # a damaged IR (a disk error, a file truncated by hand): convert it again
        log(f"the cached OpenVINO IR {xml.parent} does not read ({str(exc).splitlines()[0]}); converting it again")
        with FileLock(xml.parent.with_name(key + ".lock"), log=log):
            _convert(build(), xml.parent)
        return CompiledIR(xml, precision)


def quantized_ir(key: str, build: Callable[[], Any], calibration: Calibration | None,
                 log: Callable[[str], None] = print) -> tuple[Path, str]:
    """The int8 IR of `key`'s network and its checksum: quantized once from the f32 IR (converted from build() if
    need be) with calibration's images."""
    directory = _int8_directory(key)
    if not (directory / IR_FILE).is_file():
        if calibration is None:
            raise ConfigError(
                f"inference_precision int8: this machine has no int8 encoder yet ({directory}); it is quantized "
                "once, calibrated on a dataset's training images, when features are first extracted in int8 (python "
                "-m captioning train --data DIR --set inference_precision=int8 ...). A registered captioner's export "
                "carries its own: caption with it (python -m captioning caption --model models:/NAME@ALIAS)")
        with FileLock(directory.with_name(directory.name + ".lock"),
                      say=f"waiting for another process quantizing the encoder to int8 ({key})", log=log):
            if not (directory / IR_FILE).is_file():
                _quantize(key, build, calibration, directory, log)
    try:
        return directory / IR_FILE, json.loads((directory / QUANTIZATION_FILE).read_text())["checksum"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"the cached int8 encoder {directory} has no readable {QUANTIZATION_FILE} ({exc}); delete "
                          "that folder to quantize it again (its features' cache keys change)") from None


def _quantize(key: str, build: Callable[[], Any], calibration: Calibration, directory: Path, log) -> None:
    """NNCF's post-training quantization of `key`'s f32 IR into `directory` (the caller holds the lock)."""
    ov = import_openvino()
    try:
        with _telemetry_declined():
            import nncf
    except ImportError:
        raise ConfigError("inference_precision int8 quantizes the encoder with NNCF, which is not installed: pip "
                          "install nncf==3.4.0 (requirements/library.txt), or use f32 or bf16") from None
    images = [np.ascontiguousarray(image, dtype=np.float32) for image in calibration.images()]
    if not images:
        raise ConfigError(f"inference_precision int8: no images to calibrate the quantization with in "
                          f"{calibration.source} (it needs a training split with images)")
    xml = converted_ir(key, build, log)
    log(f"quantizing the encoder to int8 once (NNCF, calibrated on {calibration.source}; cached in {directory})")
    with warnings.catch_warnings(), _telemetry_declined():
        warnings.simplefilter("ignore")
        quantized = nncf.quantize(ov.Core().read_model(xml), nncf.Dataset(images), subset_size=len(images),
                                  preset=nncf.QuantizationPreset.MIXED)
    def write(staging: Path) -> None:
        ov.save_model(quantized, staging / IR_FILE, compress_to_fp16=False)
        record = {"checksum": _weights_checksum(staging / IR_FILE), "images": len(images), "preset": "mixed",
                  "calibration": calibration.source, "network": xml.parent.name,
                  "nncf": importlib.metadata.version("nncf")}
        (staging / QUANTIZATION_FILE).write_text(json.dumps(record, indent=1) + "\n")

    _install(directory, write)


def adopt_quantized_ir(key: str, xml: Path, source: str, log: Callable[[str], None] = print) -> None:
    """Make the int8 IR `xml` (an export's) this machine's int8 network of `key` if it has none yet; refuse one that
    differs from this machine's, whose features would not be those the captioner was trained on."""
    checksum, directory = _weights_checksum(xml), _int8_directory(key)

    def write(staging: Path) -> None:
        shutil.copyfile(xml, staging / IR_FILE)
        shutil.copyfile(xml.with_suffix(".bin"), (staging / IR_FILE).with_suffix(".bin"))
        record = {"checksum": checksum, "calibration": f"adopted from {source}"}
        (staging / QUANTIZATION_FILE).write_text(json.dumps(record, indent=1) + "\n")

    if not (directory / IR_FILE).is_file():
        directory.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(directory.with_name(directory.name + ".lock"), log=log):
            if not (directory / IR_FILE).is_file():
                _install(directory, write)
                log(f"int8 encoder: this machine had none; it now uses the one of {source} ({directory})")
    ours = quantized_ir(key, lambda: None, None, log)[1]
    if ours != checksum:
        raise ConfigError(f"this machine's int8 encoder ({directory}, checksum {ours}) is not the one {source} "
                          f"carries ({checksum}), so its features would differ from those the captioner was trained "
                          "on: decode with the export (the default), or move that folder away to use the export's")


def convert_quietly(model: Any, **kwargs) -> Any:
    """openvino.convert_model(model) without OpenVINO's telemetry (see above), for other graphs to convert
    (captioning.inference exports the decoders' steps)."""
    ov = import_openvino()
    with _telemetry_declined():
        return ov.convert_model(model, **kwargs)
