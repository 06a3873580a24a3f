"""Image encoders: a named, configurable choice that turns RGB images into one feature vector each.

- `xception`: the seed's encoder, ImageNet Xception without its top. At 299 px with global average pooling it gives
  the seed's 2048-d vector; a smaller `image_size` is several times faster, and `feature_grid` > 1 keeps a coarse
  spatial layout (a g x g grid of averages) that captions about positions need.
- `pixels`: the image shrunk to a g x g colour grid. No weights, near-instant; for tests and quick sanity runs.

`colour_grid` g > 0 appends to either a g x g grid of colour histograms of the same preprocessed image. ImageNet
Xception's last block keeps shapes but hardly colours; a cell's histogram says which colours are where, and a cell
that holds one object binds its colour to it.
"""
from __future__ import annotations

import hashlib

import numpy as np
import tensorflow as tf

from captioning.config import Config


# Bumped whenever decoding or resizing changes what the same image file turns into, so old caches are not reused.
PREPROCESSING = "jpeg-accurate-dct"
# The colour part: per cell, the share of its pixels in each bin of a soft COLOUR_BINS^3 RGB histogram (each
# channel's value split linearly between the two nearest of COLOUR_BINS evenly spaced levels), times COLOUR_SCALE so
# that it is not drowned by the CNN part in the decoder's first layer. Bump COLOUR_VERSION when either changes.
COLOUR_BINS = 4
COLOUR_SCALE = 1.0
COLOUR_VERSION = f"softrgb{COLOUR_BINS}x{COLOUR_SCALE:g}"


class Encoder:
    name = ""
    weights_id = "none"

    def __init__(self, config: Config, mirrored: bool = False):
        self.image_size = config.image_size
        self.grid = config.feature_grid
        # The features of the horizontally mirrored image, with the grid cells mirrored back, so that cell (i, j)
        # describes the same part of the scene as in the plain features and the two can be averaged.
        self.mirrored = mirrored
        self.colour_grid = config.colour_grid

    @property
    def key(self) -> str:
        """Identifies what the features mean: same key, interchangeable features."""
        text = f"{self.name}|{self.weights_id}|{self.image_size}|{self.grid}|{PREPROCESSING}"
        colour = mirror = ""
        if self.colour_grid:  # only then, so that the keys of caches without colour stay as they were
            text += f"|colour{self.colour_grid}|{COLOUR_VERSION}"
            colour = f"-c{self.colour_grid}"
        if self.mirrored:
            text += "|mirrored"
            mirror = "-mirrored"
        return (f"{self.name}-{self.image_size}px-g{self.grid}{colour}{mirror}-"
                + hashlib.sha256(text.encode()).hexdigest()[:12])

    def _prepare(self, image: tf.Tensor) -> tf.Tensor:
        return tf.image.flip_left_right(image) if self.mirrored else image

    def _unmirror(self, features: tf.Tensor, grid: int | None = None) -> tf.Tensor:
        """Mirror the grid cells of a mirrored image's features back (columns reversed; a 1 x 1 grid is itself)."""
        grid = self.grid if grid is None else grid
        if not self.mirrored or grid == 1:
            return features
        cells = tf.reshape(features, (tf.shape(features)[0], grid, grid, -1))
        return tf.reshape(tf.reverse(cells, axis=[2]), tf.shape(features))

    @property
    def dim(self) -> int:
        return self.base_dim + self.colour_grid ** 2 * COLOUR_BINS ** 3

    @property
    def base_dim(self) -> int:
        """The encoder's own features, without the colour part."""
        raise NotImplementedError

    def preprocess(self, image: tf.Tensor) -> tf.Tensor:
        """One (H, W, 3) uint8 image -> the model's (S, S, 3) float32 input."""
        raise NotImplementedError

    def unit_rgb(self, images: tf.Tensor) -> tf.Tensor:
        """Preprocessed images back to RGB in [0, 1], for the colour part."""
        raise NotImplementedError

    def encode_base(self, images: tf.Tensor) -> tf.Tensor:
        """A batch of preprocessed images -> (B, base_dim) features, cells mirrored back."""
        raise NotImplementedError

    def encode_batch(self, images: tf.Tensor) -> tf.Tensor:
        """A batch of preprocessed images -> (B, dim) float32 features: the encoder's, then the colour part."""
        features = self.encode_base(images)
        if not self.colour_grid:
            return features
        colours = colour_histogram_grid(self.unit_rgb(images), self.colour_grid)
        return tf.concat([features, self._unmirror(colours, self.colour_grid)], axis=1)

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


def colour_histogram_grid(images: tf.Tensor, grid: int) -> tf.Tensor:
    """(B, S, S, 3) RGB in [0, 1] -> (B, grid * grid * COLOUR_BINS ** 3): each cell's soft colour histogram (shares of
    its pixels, summing to 1) times COLOUR_SCALE. Soft bins, so that a colour near a bin edge does not flip bins."""
    levels = tf.linspace(0.0, 1.0, COLOUR_BINS)
    weights = tf.nn.relu(1.0 - tf.abs(tf.clip_by_value(images, 0.0, 1.0)[..., None] - levels) * (COLOUR_BINS - 1))
    red, green, blue = weights[..., 0, :], weights[..., 1, :], weights[..., 2, :]  # each (B, S, S, bins)
    joint = red[..., :, None, None] * green[..., None, :, None] * blue[..., None, None, :]
    shape = tf.shape(images)
    joint = tf.reshape(joint, (shape[0], shape[1], shape[2], COLOUR_BINS ** 3))
    return COLOUR_SCALE * _grid_pool(joint, grid)


class XceptionEncoder(Encoder):
    name = "xception"
    min_size = 71  # Xception's smallest input

    def __init__(self, config: Config, mirrored: bool = False):
        super().__init__(config, mirrored)
        if self.image_size < self.min_size:
            from captioning.config import ConfigError

            raise ConfigError(f"the xception encoder needs image_size >= {self.min_size}, got {self.image_size}")
        from captioning.weights import XCEPTION_SHA256

        self.weights_id = f"imagenet-{XCEPTION_SHA256[:16]}"
        self._model = None
        self._call = None

    @property
    def base_dim(self) -> int:
        return 2048 * self.grid * self.grid

    def _build(self):
        import keras

        from captioning.weights import xception_weights

        model = keras.applications.Xception(weights=None, include_top=False, pooling=None,
                                            input_shape=(self.image_size, self.image_size, 3))
        model.set_weights(xception_weights())
        model.trainable = False
        self._model = model
        self._call = tf.function(lambda x: self._unmirror(_grid_pool(model(x, training=False), self.grid)),
                                 reduce_retracing=True)

    def preprocess(self, image: tf.Tensor) -> tf.Tensor:
        return _resize(self._prepare(image), self.image_size) / 127.5 - 1.0  # Xception's scaling to [-1, 1]

    def unit_rgb(self, images: tf.Tensor) -> tf.Tensor:
        return (images + 1.0) / 2.0

    def encode_base(self, images: tf.Tensor) -> tf.Tensor:
        if self._call is None:
            self._build()
        return self._call(images)


class PixelEncoder(Encoder):
    name = "pixels"

    @property
    def base_dim(self) -> int:
        return self.grid * self.grid * 3

    def preprocess(self, image: tf.Tensor) -> tf.Tensor:
        return _resize(self._prepare(image), self.image_size) / 255.0

    def unit_rgb(self, images: tf.Tensor) -> tf.Tensor:
        return images

    def encode_base(self, images: tf.Tensor) -> tf.Tensor:
        return self._unmirror(_grid_pool(images, self.grid))


ENCODERS = {"xception": XceptionEncoder, "pixels": PixelEncoder}


def make_encoder(config: Config, mirrored: bool = False) -> Encoder:
    return ENCODERS[config.encoder](config, mirrored)
