"""The Captioner: images or prepared features to captions, with any registered decoder or an ensemble, saved and
loaded as a bundle directory:

    captioner/
      config.json   the full Config (encoder name, input size, pooling, decoder and decoding settings)
      vocab.json    the vocabulary
      decoder.keras the trained decoder (built-in and this project's layers only, no Lambda; loaded in Keras
                    safe mode)
      decoder-1.keras, decoder-2.keras, ...   an ensemble's further members (captioning/models/ensemble.py), if any
      config-1.json, config-2.json, ...       their own configs, which name the features each reads (a bundle
                                              without them: the features config.json names)
      neighbours.npz  the training images' features and captions, for consensus re-ranking (decoding/consensus.py),
                      if the captioner re-ranks

      export/         the captioner as OpenVINO IR, for decoding without TensorFlow (captioning.inference), if
                      exported: python -m captioning export DIR

The encoder's weights are not copied: they are resolved offline by name when the captioner first encodes an image
(an export carries Xception's network as IR).

A bundle with an up-to-date export decodes with it by default: `load` then imports neither TensorFlow nor Keras, and
reads the Keras decoders only if something needs them (saving, fine-tuning, ensembling). `load(..., use_export=False)`
decodes through Keras.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from captioning.config import Config
from captioning.data.images import ImageSource, load_rgb
from captioning.data.text import Vocabulary
from captioning.decoding.bundle import FILES, BundleError, load_decoder
from captioning.decoding.consensus import FILE as NEIGHBOURS_FILE
from captioning.decoding.consensus import Neighbours, query_features
from captioning.decoding.search import beam_search, greedy_search
from captioning.features.inputs import ImageInputs, MemberInputs
from captioning.inference import FOLDER as EXPORT_FOLDER
from captioning.inference import ExportError
from captioning.models import decoder_spec, import_families, make_step_decoder, spec_of_model
from captioning.models.ensemble import EnsembleStepDecoder, check_compatible

if TYPE_CHECKING:  # (these modules import TensorFlow or Keras, which decoding an export does without)
    import keras

    from captioning.features.encoders import Encoder
    from captioning.inference.runtime import Export


def _say(line: str) -> None:
    print(line, file=sys.stderr)  # (stdout is the captions')


class Captioner:
    def __init__(self, config: Config, vocab: Vocabulary, model: keras.Model, members: Sequence[keras.Model] = (),
                 member_configs: Sequence[Config] | None = None, neighbours: Neighbours | None = None):
        """`members`: further decoders of an ensemble (same vocabulary), decoded with `model` as one;
        `member_configs`: the configs they were trained with, which name the features each reads (default:
        `config`'s); `neighbours`: the index that config.rerank_neighbours re-ranks with (features of the first
        feature group)."""
        self.config, self.vocab, self._models = config, vocab, [model, *members]
        self.neighbours = neighbours
        self.member_configs = list(member_configs) if member_configs is not None else [config] * len(members)
        if len(self.member_configs) != len(members):
            raise ValueError(f"{len(members)} members but {len(self.member_configs)} member configs")
        self.exported: Export | None = None  # the export this captioner decodes with, if any (see load)
        self._bundle: Path | None = None  # where the Keras decoders are read from when first needed (an export's)
        self.decoder = make_step_decoder(model, vocab)
        if members:
            parts = self._parts()
            self.decoder = EnsembleStepDecoder([self.decoder] + [make_step_decoder(m, vocab) for m in members],
                                               parts if max(parts) > 0 else None)
        self._encoders: dict = {}

    @classmethod
    def _from_export(cls, bundle: Path, exported: "Export", config: Config, vocab: Vocabulary,
                     member_configs: list[Config], neighbours: Neighbours | None) -> "Captioner":
        """A captioner decoding with `exported`; its Keras decoders are read from `bundle` only when needed."""
        captioner = cls.__new__(cls)
        captioner.config, captioner.vocab, captioner.neighbours = config, vocab, neighbours
        captioner.member_configs, captioner._models, captioner._encoders = member_configs, None, {}
        captioner.exported, captioner._bundle, captioner.decoder = exported, bundle, exported.decoder
        return captioner

    @classmethod
    def ensemble(cls, captioners: Sequence["Captioner"]) -> "Captioner":
        """One captioner decoding the mean of these captioners' next-word distributions. The first one's config
        (its decoding settings) is the ensemble's, reading the maps if any member needs them."""
        check_compatible(list(captioners))
        first = captioners[0]
        decoders = [m for c in captioners for m in c.models]
        configs = [config for c in captioners for config in c.decoder_configs]
        return cls(_reading_maps(first.config, decoders), first.vocab, decoders[0], decoders[1:], configs[1:],
                   first.neighbours)  # found by the first member's features, which are the ensemble's first group

    @property
    def models(self) -> list["keras.Model"]:
        """The decoder, and an ensemble's further members (for a captioner decoding an export, read from its
        bundle now)."""
        if self._models is None:
            self._models = _load_models(self._bundle)
        return list(self._models)

    @property
    def model(self) -> "keras.Model":
        return self.models[0]

    @property
    def members(self) -> list["keras.Model"]:
        return self.models[1:]

    @property
    def decoder_configs(self) -> list[Config]:
        """For each of `models`, the config that names the features it reads."""
        return [self.config, *self.member_configs]

    @property
    def feature_groups(self) -> list[Config]:
        """One config per feature setting the decoders read, the model's first: what encode_images computes, in
        order (several only for an ensemble whose members read different features; see ensemble.MemberInputs).
        Each reads the maps if an attention decoder reads those features."""
        if self.exported is not None:
            return list(self.exported.groups)
        from captioning.features.encoders import feature_key

        if len({feature_key(c) for c in self.decoder_configs}) == 1:
            return [self.config]
        keys = list(dict.fromkeys(feature_key(c) for c in self.decoder_configs))
        return [_reading_maps(next(c for c in self.decoder_configs if feature_key(c) == key),
                              [m for m, c in zip(self.models, self.decoder_configs) if feature_key(c) == key])
                for key in keys]

    def _parts(self) -> list[int]:
        """For each of `models`, its feature group's index."""
        from captioning.features.encoders import feature_key

        keys = [feature_key(c) for c in self.feature_groups]
        return [keys.index(feature_key(c)) for c in self.decoder_configs]

    def _encoder_for(self, config: Config, mirrored: bool = False) -> "Encoder":
        """An encoder built once per captioner (its CNN is built on first use); the export's, if it decodes one."""
        if self.exported is not None:
            return self.exported.encoder_for(config, mirrored)
        from captioning.features.encoders import make_encoder

        encoder = make_encoder(config, mirrored=mirrored)
        return self._encoders.setdefault(encoder.key, encoder)

    @property
    def encoder(self) -> "Encoder":
        return self._encoder_for(self.config if self.exported is None else self.feature_groups[0])

    def save(self, directory: Path) -> Path:
        if self.config.rerank_neighbours and self.neighbours is None:
            raise ValueError("this captioner re-ranks its beam (rerank_neighbours) but has no neighbour index to save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / "config.json")
        self.vocab.save(directory / "vocab.json")
        self.model.save(directory / "decoder.keras")
        for pattern in ("decoder-*.keras", "config-*.json", NEIGHBOURS_FILE):  # an earlier bundle's would be read
            for stale in directory.glob(pattern):
                stale.unlink()
        shutil.rmtree(directory / EXPORT_FOLDER, ignore_errors=True)  # of other decoders: export the new ones
        if self.neighbours is not None:
            self.neighbours.save(directory)
        for number, (member, config) in enumerate(zip(self.members, self.member_configs), start=1):
            member.save(directory / f"decoder-{number}.keras")
            config.save(directory / f"config-{number}.json")
        return directory

    @classmethod
    def load(cls, directory: Path, use_export: bool = True, log=_say) -> "Captioner":
        """The captioner of a bundle directory, decoding with its export if it has an up-to-date one (unless
        `use_export` is False), else through Keras; `log` says which, once per bundle and process."""
        directory = Path(directory)
        missing = [name for name in FILES if not (directory / name).is_file()]
        if missing:
            raise BundleError(f"{directory} is not a captioner bundle (missing {', '.join(missing)}); "
                              "train one with: python -m captioning train --out DIR")
        config = Config.load(directory / "config.json")
        own = [directory / f"config-{n}.json" for n in _member_numbers(directory)]
        member_configs = [Config.load(path) if path.is_file() else config for path in own]
        try:
            neighbours = Neighbours.load(directory)
        except ValueError as exc:
            raise BundleError(f"{exc}; rebuild the index with python -m captioning rerank") from None
        if config.rerank_neighbours and neighbours is None:
            raise BundleError(f"{directory} re-ranks its beam (rerank_neighbours={config.rerank_neighbours}) but "
                              f"has no {NEIGHBOURS_FILE}; rebuild it with python -m captioning rerank")
        vocab = Vocabulary.load(directory / "vocab.json")
        _adopt_int8(directory, log)
        exported, note = _read_export(directory) if use_export else (None, None)
        if exported is not None:
            _say_once(note, directory, log)
            return cls._from_export(directory, exported, config, vocab, member_configs, neighbours)
        models = _load_models(directory)
        if note is not None:  # (after the decoders loaded: a bundle that does not load is one error line)
            _say_once(note, directory, log)
        return cls(config, vocab, models[0], models[1:], member_configs, neighbours)

    @property
    def has_attention(self) -> bool:
        return self.decoder.has_attention

    # From features (training, evaluation) ...
    def decode_features(self, inputs, beam_width: int | None = None, with_attention: bool = False):
        """For each image's inputs (feature vectors; for the attention decoder ImageInputs), captions with scores,
        best first (one caption when greedy). With `with_attention` (attention decoder only), also the best
        caption's attention per image: (words, positions). Beam search's captions are re-ranked by consensus when
        config.rerank_neighbours is set (their scores are then the mixed ones)."""
        width = self.config.beam_width if beam_width is None else beam_width
        with_attention = with_attention and self.has_attention
        if width <= 1:
            found = greedy_search(self.decoder, inputs, self.config.max_length, with_attention=with_attention,
                                  no_repeat_ngram=self.config.no_repeat_ngram)
            ids, attention = found if with_attention else (found, None)
            captions = [[(" ".join(self.vocab.decode(row)), float("nan"))] for row in ids]
            return (captions, attention) if with_attention else captions
        found = beam_search(self.decoder, inputs, self.config.max_length, width, self.config.length_penalty,
                            with_attention=with_attention, no_repeat_ngram=self.config.no_repeat_ngram)
        beams, attention = found if with_attention else (found, None)
        captions = [[(" ".join(self.vocab.decode(ids)), score) for ids, score in image_beams] for image_beams in beams]
        orders = [[0]] * len(captions)
        if self.config.rerank_neighbours:
            if self.neighbours is None:
                raise ValueError("this captioner's config asks for consensus re-ranking (rerank_neighbours="
                                 f"{self.config.rerank_neighbours}) but its bundle has no neighbour index; build one "
                                 "with python -m captioning rerank, or decode with --set rerank_neighbours=0")
            captions, orders = self.neighbours.rerank(captions, query_features(inputs), self.config.rerank_neighbours,
                                                      self.config.rerank_weight)
        if not with_attention:
            return captions
        return captions, [hypotheses[order[0]] for hypotheses, order in zip(attention, orders)]

    # ... or from images (paths, bytes, arrays, PIL images).
    def encode_images(self, images: Sequence[ImageSource]):
        """What the decoder reads for these images, computed as the feature cache computes it (for an ensemble
        whose members read different features, MemberInputs; each image is encoded once per encoder)."""
        pixels = [load_rgb(image) for image in images]
        encoded = {}

        def encode(config: Config, mirrored: bool = False):
            encoder = self._encoder_for(config, mirrored)
            if encoder.key not in encoded:
                encoded[encoder.key] = encoder.encode_inputs(pixels)
            return encoded[encoder.key]

        parts = []
        for config in self.feature_groups:
            features, maps = encode(config)
            if config.feature_flip and config.flip_mode == "average":  # as it was trained
                mirrored, mirrored_maps = encode(config, mirrored=True)
                features = (features + mirrored) / 2
                maps = (maps.astype(np.float32) + mirrored_maps.astype(np.float32)) / 2
            parts.append(features if not decoder_spec(config.decoder).reads_maps else
                         ImageInputs(features, maps.reshape(len(maps), -1, maps.shape[-1]).astype(np.float32)))
        return parts[0] if len(parts) == 1 else MemberInputs(parts)

    def caption_alternatives(self, images: Sequence[ImageSource],
                             beam_width: int | None = None) -> list[list[tuple[str, float]]]:
        return self.decode_features(self.encode_images(images), beam_width)

    def caption_with_attention(self, image: ImageSource, beam_width: int | None = None):
        """One image's best caption and where the decoder looked for each of its words: (words, h, w) weights that
        sum to 1 per word; None for a merge decoder, which has no attention."""
        inputs = self.encode_images([image])
        if not self.has_attention:
            return self.decode_features(inputs, beam_width)[0][0][0], None
        captions, attention = self.decode_features(inputs, beam_width, with_attention=True)
        side = int(round(np.sqrt(attention[0].shape[1])))
        return captions[0][0][0], attention[0].reshape(-1, side, side)

    def caption(self, images: Sequence[ImageSource] | ImageSource, beam_width: int | None = None):
        """A caption for each image; a single image (not in a list) gives a single string."""
        if isinstance(images, np.ndarray) and images.ndim == 4:  # a batch of images in one array
            images = list(images)
        single = not isinstance(images, (list, tuple))
        captions = [alternatives[0][0] for alternatives in
                    self.caption_alternatives([images] if single else images, beam_width)]
        return captions[0] if single else captions

    def describe(self) -> str:
        return json.dumps(self.config.to_dict())


def _reading_maps(config: Config, models: Sequence[keras.Model]) -> Config:
    """`config`, naming the family of the first of `models` that reads the maps if one does (the inputs then hold the
    maps it needs), and otherwise a family that does not (no maps to read)."""
    specs = [spec_of_model(m) for m in models]
    readers = [spec for spec in specs if spec.reads_maps]
    chosen = readers[0] if readers else (decoder_spec(config.decoder) if not decoder_spec(config.decoder).reads_maps
                                         else specs[0])
    if chosen.name == config.decoder and all(getattr(config, k) == v for k, v in chosen.required.items()):
        return config
    return config.replace(decoder=chosen.name, **chosen.required)


def _member_numbers(directory: Path) -> list[int]:
    """The numbers of an ensemble's further decoders in a bundle (decoder-1.keras, ...), in order."""
    return sorted(int(p.stem[len("decoder-"):]) for p in directory.glob("decoder-*.keras")
                  if p.stem[len("decoder-"):].isdigit())


def _load_models(directory: Path) -> list["keras.Model"]:
    """A bundle's Keras decoders, the first one's first."""
    import_families()  # (a family's own Keras layers are registered when its module is imported)
    paths = [directory / "decoder.keras", *(directory / f"decoder-{n}.keras" for n in _member_numbers(directory))]
    return [load_decoder(path) for path in paths]


_said: set[tuple[str, str]] = set()  # what was said in this process, and of which bundle


def _say_once(note: tuple[str, str], directory: Path, log) -> None:
    """Say which way a bundle decodes once per bundle (that it has no export, once per process: a search loads many
    trials' bundles, which it never exports)."""
    what, line = note
    key = (what, "" if what == "none" else str(directory))
    if key not in _said:
        _said.add(key)
        log(line)


def _adopt_int8(directory: Path, log) -> None:
    """The int8 networks that an int8 captioner's export carries are this machine's, so that its features
    (evaluating, re-ranking, registering, decoding through Keras) are those it was trained on: installed where there
    is none, refused where another is (captioning.features.openvino_runtime.adopt_quantized_ir)."""
    from captioning.features.openvino_runtime import INT8_SUFFIX, adopt_quantized_ir

    for xml in sorted((directory / EXPORT_FOLDER).glob(f"encoder-*{INT8_SUFFIX}.xml")):
        # encoder-<the int8 folder's name>.xml (captioning.inference.export)
        adopt_quantized_ir(xml.stem[len("encoder-"):-len(INT8_SUFFIX)], xml, f"the export of {directory}", log)


def _read_export(directory: Path) -> tuple["Export | None", tuple[str, str]]:
    """The bundle's export if it has an up-to-date one, and what to say about the way it decodes."""
    from captioning.inference.runtime import read_export

    try:
        exported = read_export(directory)
    except ExportError as exc:
        return None, ("stale", f"captioner: {exc}, so it decodes through Keras; export it again with: python -m "
                               f"captioning export {directory}")
    if exported is None:
        return None, ("none", f"captioner: {directory} has no inference export, so it decodes through Keras "
                              f"(TensorFlow); python -m captioning export {directory} makes one, which decodes without "
                              "TensorFlow")
    return exported, ("export", f"captioner: decoding with the OpenVINO export in {exported.directory} (no TensorFlow)")
