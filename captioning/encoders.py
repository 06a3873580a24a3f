"""Image encoders: a named, configurable choice that turns RGB images into one feature vector each.

- `xception`: the seed's encoder, ImageNet Xception without its top. At 299 px with global average pooling it gives
  the seed's 2048-d vector; a smaller `image_size` is several times faster, and `feature_grid` > 1 keeps a coarse
  spatial layout (a g x g grid of averages) that captions about positions need.
- `pixels`: the image shrunk to a g x g colour grid. No weights, near-instant; for tests and quick sanity runs.
"""
from __future__ import annotations

import hashlib

import numpy as np
import tensorflow as tf

from captioning.config import Config


# Bumped whenever decoding or resizing changes what the same image file turns into, so old caches are not reused.
PREPROCESSING = "jpeg-accurate-dct"


class Encoder:
    name = ""
    weights_id = "none"

    def __init__(self, config: Config):
        self.image_size = config.image_size
        self.grid = config.feature_grid

    @property
    def key(self) -> str:
        """Identifies what the features mean: same key, interchangeable features."""
        text = f"{self.name}|{self.weights_id}|{self.image_size}|{self.grid}|{PREPROCESSING}"
        return f"{self.name}-{self.image_size}px-g{self.grid}-" + hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def preprocess(self, image: tf.Tensor) -> tf.Tensor:
        """One (H, W, 3) uint8 image -> the model's (S, S, 3) float32 input."""
        raise NotImplementedError

    def encode_batch(self, images: tf.Tensor) -> tf.Tensor:
        """A batch of preprocessed images -> (B, dim) float32 features."""
        raise NotImplementedError

    def encode(self, images: list[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """RGB uint8 arrays of any size -> features, without the file pipeline (used when captioning)."""
        out = []
        for start in range(0, len(images), batch_size):
            batch = tf.stack([self.preprocess(tf.convert_to_tensor(im)) for im in images[start:start + batch_size]])
            out.append(self.encode_batch(batch).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
    image = tf.cast(image, tf.float32)
    return tf.image.resize(image, (size, size), method="bilinear", antialias=True)


def _grid_pool(maps: tf.Tensor, grid: int) -> tf.Tensor:
    """(B, h, w, c) -> (B, grid * grid * c): averages over a grid x grid partition of the map."""
    if grid == 1:
        return tf.reduce_mean(maps, axis=(1, 2))
    pooled = tf.image.resize(maps, (grid, grid), method="area")
    return tf.reshape(pooled, (tf.shape(maps)[0], grid * grid * maps.shape[-1]))


class XceptionEncoder(Encoder):
    name = "xception"
    min_size = 71  # Xception's smallest input

    def __init__(self, config: Config):
        super().__init__(config)
        if self.image_size < self.min_size:
            from captioning.config import ConfigError

            raise ConfigError(f"the xception encoder needs image_size >= {self.min_size}, got {self.image_size}")
        from captioning.weights import XCEPTION_SHA256

        self.weights_id = f"imagenet-{XCEPTION_SHA256[:16]}"
        self._model = None
        self._call = None

    @property
    def dim(self) -> int:
        return 2048 * self.grid * self.grid

    def _build(self):
        import keras

        from captioning.weights import xception_weights

        model = keras.applications.Xception(weights=None, include_top=False, pooling=None,
                                            input_shape=(self.image_size, self.image_size, 3))
        model.set_weights(xception_weights())
        model.trainable = False
        self._model = model
        self._call = tf.function(lambda x: _grid_pool(model(x, training=False), self.grid), reduce_retracing=True)

    def preprocess(self, image: tf.Tensor) -> tf.Tensor:
        return _resize(image, self.image_size) / 127.5 - 1.0  # Xception's scaling to [-1, 1]

    def encode_batch(self, images: tf.Tensor) -> tf.Tensor:
        if self._call is None:
            self._build()
        return self._call(images)


class PixelEncoder(Encoder):
    name = "pixels"

    @property
    def dim(self) -> int:
        return self.grid * self.grid * 3

    def preprocess(self, image: tf.Tensor) -> tf.Tensor:
        return _resize(image, self.image_size) / 255.0

    def encode_batch(self, images: tf.Tensor) -> tf.Tensor:
        return _grid_pool(images, self.grid)


ENCODERS = {"xception": XceptionEncoder, "pixels": PixelEncoder}


def make_encoder(config: Config) -> Encoder:
    return ENCODERS[config.encoder](config)
