"""Exporting a captioner bundle for inference without TensorFlow: every decoder's start and step (ensemble members
each) and the encoder's network (Xception, or its entry flow) as OpenVINO IR, in the bundle's `export/` folder (the
layout: captioning.inference).

A decoder's start and step are traced as graph functions of fixed signature from the StepDecoder protocol
(`graph_start`, and `step` with attention) and converted with openvino.convert_model; the step takes the top k inside
(k is an input), so that only the k best words leave it, as from the Keras decoders' step_top. The weights are kept
in float32. Each converted pair is run once beside its Keras decoder on generated inputs before it is written, so an
export that computes something else is refused, not written. TensorFlow is imported here, by the exporting process
only.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from captioning.features import encoder_spec, numpy_encoding
from captioning.inference import FOLDER, FORMAT, MANIFEST, ExportError, source_hashes

TOLERANCE = 1e-3  # largest difference of log-probabilities allowed between the converted step and Keras's


def export_captioner(captioner, directory: Path, log: Callable[[str], None] = print) -> Path:
    """Write the inference export of `captioner` (a decoding.Captioner loaded from, or just saved to, the bundle
    `directory`) into directory/export, replacing any there; returns that folder."""
    import tensorflow as tf

    from captioning.features.encoders import feature_key, make_encoder
    from captioning.features.openvino_runtime import import_openvino
    from captioning.models import make_step_decoder, spec_of_model

    directory = Path(directory)
    _check_constants()
    groups = captioner.feature_groups
    keys = [feature_key(config) for config in groups]
    parts = [keys.index(feature_key(config)) for config in captioner.decoder_configs]
    for config in groups:
        if config.encoder not in numpy_encoding.SCALING:
            raise ExportError(f"the {config.encoder} encoder has no inference export (only "
                              f"{', '.join(numpy_encoding.SCALING)}); this captioner decodes through Keras")
    ov = import_openvino()
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=f".{FOLDER}-"))
    try:
        decoders = []
        for number, (model, part) in enumerate(zip(captioner.models, parts)):
            family = spec_of_model(model)
            decoder = make_step_decoder(model, captioner.vocab)
            if not hasattr(decoder, "graph_start"):
                raise ExportError(f"the {family.name} decoder offers no graph_start (see captioning.models.base), so "
                                  "it cannot be exported; this captioner decodes through Keras")
            encoder = make_encoder(groups[part])
            entry = _export_decoder(decoder, family, encoder.dim, _map_shape(groups[part]), staging,
                                    f"decoder-{number}", tf, ov)
            decoders.append({**entry, "family": family.name, "part": part})
            log(f"export: decoder {number} ({family.name}) converted")
        manifest = {
            "format": FORMAT, "sources": source_hashes(directory),
            "vocabulary": len(captioner.vocab), "start_id": int(captioner.vocab.start_id),
            "end_id": int(captioner.vocab.end_id), "decoders": decoders,
            "groups": [_group(config, make_encoder, staging, log) for config in groups],
            "preprocessing": numpy_encoding.PREPROCESSING, "colour_version": numpy_encoding.COLOUR_VERSION,
            "libraries": {name: importlib.import_module(name).__version__
                          for name in ("openvino", "tensorflow", "keras")}}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        target = directory / FOLDER
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum(p.stat().st_size for p in target.iterdir()) / 1e6
    log(f"export: wrote {target} ({size:.1f} MB): the captioner now decodes with OpenVINO, without TensorFlow")
    return target


def _check_constants() -> None:
    """The NumPy encoding's copies of the encoders' constants must be theirs (encoders.py imports TensorFlow)."""
    from captioning.features import PIXEL_MAP, encoders

    ours = (numpy_encoding.PREPROCESSING, numpy_encoding.COLOUR_VERSION, numpy_encoding.PIXEL_MAP,
            numpy_encoding.MAP_COLOUR_SCALE, numpy_encoding.MAP_PLACE_SCALE)
    theirs = (encoders.PREPROCESSING, encoders.COLOUR_VERSION, PIXEL_MAP, encoders.MAP_COLOUR_SCALE,
              encoders.MAP_PLACE_SCALE)
    if ours != theirs:
        raise ExportError(f"captioning/features/numpy_encoding.py computes {ours} but the encoders {theirs}: update "
                          "its constants (and its code) to the encoders' before exporting")


def _map_shape(config) -> tuple[int, int]:
    """(positions, channels) of the maps of config's encoder."""
    height, width, channels = encoder_spec(config.encoder).map_shape(config.image_size)
    return height * width, channels


def _export_decoder(decoder, family, dim: int, map_shape: tuple[int, int], staging: Path, name: str, tf, ov) -> dict:
    """Convert the decoder's start and step, check them against Keras, save them; their manifest entry."""
    from captioning.core.graph import graph_function
    from captioning.features.openvino_runtime import convert_quietly

    reads_maps = family.reads_maps
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, dim)).astype(np.float32)
    maps = rng.gamma(0.5, 1.0, size=(3, *map_shape)).astype(np.float32)
    start_inputs = [features, maps] if reads_maps else [features]
    start_signature = [tf.TensorSpec((None, dim), tf.float32)] + \
        ([tf.TensorSpec((None, *map_shape), tf.float32)] if reads_maps else [])

    def start(features, maps=None):
        context, states = decoder.graph_start(features, maps)
        return (*context, *states)

    start_function = graph_function(start, input_signature=start_signature)
    started = [t.numpy() for t in start_function(*start_inputs)]
    context_count = len(started) - decoder.state_count
    context, states = started[:context_count], started[context_count:]
    spec = lambda value: tf.TensorSpec((None, *value.shape[1:]), tf.as_dtype(value.dtype))

    def step(tokens, *flat):
        own_states, own_context, k = list(flat[:len(states)]), tuple(flat[len(states):-1]), flat[-1]
        logp, new_states, alpha = decoder.step(tokens, own_states, own_context, with_attention=True)
        values, ids = tf.math.top_k(logp, k)
        return (values, ids, *new_states, *([alpha] if decoder.has_attention else []), logp)

    step_signature = [tf.TensorSpec((None,), tf.int32), *map(spec, states), *map(spec, context),
                      tf.TensorSpec((), tf.int32)]
    step_function = graph_function(step, input_signature=step_signature)
    tokens = rng.integers(0, int(decoder.banned.shape[0]), size=3).astype(np.int32)
    step_inputs = [tokens, *states, *context, np.array(2, np.int32)]
    files = {}
    for part, function, inputs in (("start", start_function, start_inputs), ("step", step_function, step_inputs)):
        concrete = function.get_concrete_function()
        converted = _in_output_order(ov, convert_quietly(concrete), concrete)
        _check(ov, converted, function, inputs, f"{name}'s {part}", ids=1 if part == "step" else None)
        ov.save_model(converted, staging / f"{name}-{part}.xml", compress_to_fp16=False)  # float32 weights
        files[part] = f"{name}-{part}.xml"
    return {**files, "reads_maps": reads_maps, "has_attention": bool(decoder.has_attention),
            "context_count": context_count, "state_count": len(states),
            "banned": np.flatnonzero(~np.isfinite(np.asarray(decoder.banned))).tolist()}


def _in_output_order(ov, converted, concrete):
    """The converted graph with its outputs in the function's order. OpenVINO orders them by their TensorFlow names
    (Identity, Identity_1, Identity_10, ..., Identity_2), which scrambles a function of more than 10 outputs (a
    transformer of 3 blocks: a start of 14)."""
    results = {result.get_friendly_name(): result for result in converted.get_results()}
    names = [tensor.name for tensor in concrete.outputs]
    if sorted(results) != sorted(names):
        return converted  # named otherwise: _check compares what it computes with the function
    return ov.Model([results[name] for name in names], converted.get_parameters(), converted.get_friendly_name())


def _check(ov, converted, function, inputs: list, what: str, ids: int | None = None) -> None:
    """Refuse a conversion whose outputs differ from the graph function's on `inputs`. Output `ids` (the top k's
    word ids, which a near-tie may order either way) is checked against the converted graph's own log-probabilities
    (its last output) instead: they must be those of its values (output 0)."""
    compiled = ov.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled.create_infer_request().infer(inputs).to_tuple()
    expected = [t.numpy() for t in function(*inputs)]
    if ids is not None:
        picked = np.take_along_axis(got[-1], got[ids].astype(np.int64), axis=1)
        if not np.allclose(picked, got[0], atol=TOLERANCE):
            raise ExportError(f"the OpenVINO conversion of {what} gives word ids whose log-probabilities are not its "
                              "best; decode this captioner through Keras")
        got, expected = [g for i, g in enumerate(got) if i != ids], [e for i, e in enumerate(expected) if i != ids]
    for index, (a, b) in enumerate(zip(got, expected)):
        finite = np.isfinite(b)
        if a.shape != b.shape or not np.array_equal(finite, np.isfinite(a)) or \
                np.max(np.abs(a[finite] - b[finite]), initial=0.0) > TOLERANCE:
            raise ExportError(f"the OpenVINO conversion of {what} computes something else than Keras (output "
                              f"{index}: shapes {a.shape} and {b.shape}); decode this captioner through Keras")
    if len(got) != len(expected):
        raise ExportError(f"the OpenVINO conversion of {what} has {len(got)} outputs, Keras {len(expected)}")


def _group(config, make_encoder, staging: Path, log) -> dict:
    """A feature group's manifest entry: what the NumPy encoding needs, and its encoder's network's IR (if it has
    one) copied beside it."""
    entry = {"config": config.to_dict(), "key": make_encoder(config).key,
             "mirrored_key": make_encoder(config, mirrored=True).key, "network": None}
    if config.encoder in numpy_encoding.NETWORKS:
        entry["network"] = _network_ir(config, make_encoder, staging, log)
    return entry


def _network_ir(config, make_encoder, staging: Path, log) -> str:
    """The IR of the encoder's network (Xception, or its entry flow; converted once into the cache by
    captioning.features.openvino_runtime, under a key of the encoder's name and weights), copied into the export;
    its file name."""
    encoder = make_encoder(config)
    xml = encoder.network_ir(log)
    name = f"encoder-{xml.parent.name}.xml"  # the network's key (and -int8 for its quantized IR)
    if not (staging / name).is_file():
        shutil.copyfile(xml, staging / name)
        shutil.copyfile(xml.with_suffix(".bin"), (staging / name).with_suffix(".bin"))
    return name
