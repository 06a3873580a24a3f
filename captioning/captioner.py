"""The captioner bundle: config (encoder choice included), vocabulary and decoder, in one directory.

    captioner/
      config.json   the full Config (encoder name, input size, pooling, decoder and decoding settings)
      vocab.json    the vocabulary
      decoder.keras the trained decoder (built-in layers only; loaded in Keras safe mode)

The encoder's weights are not copied: they are resolved offline by name when the captioner first encodes an image.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import keras
import numpy as np

from captioning.config import Config
from captioning.decode import beam_search, greedy_search
from captioning.encoders import Encoder, make_encoder
from captioning.images import ImageSource, load_rgb
from captioning.model import StepDecoder
from captioning.text import Vocabulary

FILES = ("config.json", "vocab.json", "decoder.keras")


class BundleError(FileNotFoundError):
    """A directory that is not a complete captioner bundle."""


class Captioner:
    def __init__(self, config: Config, vocab: Vocabulary, model: keras.Model):
        self.config, self.vocab, self.model = config, vocab, model
        self.decoder = StepDecoder(model, vocab)
        self._encoder: Encoder | None = None

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = make_encoder(self.config)
        return self._encoder

    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / "config.json")
        self.vocab.save(directory / "vocab.json")
        self.model.save(directory / "decoder.keras")
        return directory

    @classmethod
    def load(cls, directory: Path) -> "Captioner":
        directory = Path(directory)
        missing = [name for name in FILES if not (directory / name).is_file()]
        if missing:
            raise BundleError(f"{directory} is not a captioner bundle (missing {', '.join(missing)}); "
                              "train one with: python -m captioning train --out DIR")
        model = keras.saving.load_model(directory / "decoder.keras", compile=False, safe_mode=True)
        return cls(Config.load(directory / "config.json"), Vocabulary.load(directory / "vocab.json"), model)

    # From features (training, evaluation) ...
    def decode_features(self, features: np.ndarray, beam_width: int | None = None) -> list[list[tuple[str, float]]]:
        """For each feature vector, captions with scores, best first (one caption when greedy)."""
        width = self.config.beam_width if beam_width is None else beam_width
        if width <= 1:
            return [[(" ".join(self.vocab.decode(ids)), float("nan"))]
                    for ids in greedy_search(self.decoder, features, self.config.max_length)]
        beams = beam_search(self.decoder, features, self.config.max_length, width, self.config.length_penalty)
        return [[(" ".join(self.vocab.decode(ids)), score) for ids, score in image_beams] for image_beams in beams]

    # ... or from images (paths, bytes, arrays, PIL images).
    def caption_alternatives(self, images: Sequence[ImageSource],
                             beam_width: int | None = None) -> list[list[tuple[str, float]]]:
        pixels = [load_rgb(image) for image in images]
        features = self.encoder.encode(pixels)
        if self.config.feature_flip and self.config.flip_mode == "average":  # as it was trained
            features = (features + make_encoder(self.config, mirrored=True).encode(pixels)) / 2
        return self.decode_features(features, beam_width)

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
