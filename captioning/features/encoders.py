"""Image encoders: a named, configurable choice that turns RGB images into a spatial feature map each, and the
feature vector derived from it.

- `xception`: the seed's encoder, ImageNet Xception without its top. Its map at 299 px is 10 x 10 x 2048; global
  average pooling gives the seed's 2048-d vector, `feature_grid` > 1 a coarse spatial layout (a g x g grid of
  averages) that captions about positions need, and the attention decoder attends over the whole map. A smaller
  `image_size` is several times faster.
- `pixels`: the image shrunk to an 8 x 8 colour map (`feature_grid` g: a g x g grid of it). No weights, near-instant;
  for tests and quick sanity runs.

The map is what the cache keeps (float16, see captioning.features.store), so the pooled vector, every grid and the
attention decoder's input come from one extraction. `map_key` names what a map means; `key` the derived vector. Both
hold the installed versions of the libraries that decode, resize and encode the images (`Encoder.libraries`), since
an upgrade of any of them can change what the same file turns into.

`encoder_runtime` says what runs the network: TensorFlow (Keras), or OpenVINO (`openvino`: the same Keras network and
weights converted once, see captioning.features.openvino_runtime) in `inference_precision` f32, bf16 or int8 (its
checksum in the keys). Both keys hold the runtime and the precision the maps are computed in, but for TensorFlow,
whose keys stay as they were before the runtime could be chosen, so that existing caches are read, not extracted again.

`colour_grid` g > 0 appends to either encoder's features a g x g grid of the colours of the image's foreground (the
pixels unlike its border) and the colour of its background, computed from the same preprocessed image. ImageNet
Xception's last block keeps shapes but hardly colours; a cell that holds one object tells its colour and how much of
the cell it covers.
"""
from __future__ import annotations

import hashlib
import importlib

import numpy as np
import tensorflow as tf

from captioning.config import Config, ConfigError
from captioning.core.graph import graph_function
from captioning.features import PIXEL_MAP, encoder_spec
from captioning.features.openvino_runtime import (compiled_ir, converted_ir, import_openvino, inference_precision,
                                                  ir_key, quantized_ir)
from captioning.features.weights import XCEPTION_SHA256, xception_weights

# Bumped whenever our decoding or resizing changes what the same image file turns into, so old caches are not reused
# (a new version of a library that does it changes the keys by itself: see library_versions).
PREPROCESSING = "jpeg-accurate-dct"
# The colour part. Per cell: a soft COLOUR_BINS^3 RGB histogram of the foreground pixels (each channel split linearly
# between the two nearest of COLOUR_BINS evenly spaced levels), divided by the cell's foreground share (+ 0.02, so an
# empty cell stays near zero), then that share. Foreground: the largest channel difference from the background (the
# per-channel median of the image's border pixels), ramped from 0 at FOREGROUND[0] to 1 at FOREGROUND[1]. After the
# cells, the background colour in the same bins. All times COLOUR_SCALE, so that the part is not drowned by the CNN's
# features in the decoder's first layer: about as long a vector as the CNN part (45 against 36 on the embedded
# scenes); 40 did best of 10, 20, 40 and 80 in single exploratory trainings. (Halving the image first made the
# colour part 4x cheaper, extraction 25 % faster, and the embedded search's baseline worse: dev BLEU-4 0.625 against
# 0.705.) Bump COLOUR_VERSION whenever any of these changes.
COLOUR_BINS = 6
FOREGROUND = (0.15, 0.3)
COLOUR_SCALE = 40.0
COLOUR_VERSION = f"fg{FOREGROUND[0]:g}-{FOREGROUND[1]:g}-rgb{COLOUR_BINS}-x{COLOUR_SCALE:g}"
# The entry flow's activations are about 3x those of the whole network's last block (on the embedded scenes: mean 0.63
# against 0.18, std 0.83 against 0.40). Unscaled, the decoders tuned on the whole network's features learnt nothing
# from them: on dev, 54 % of the backgrounds right (the merge decoder) and about half of the colour words in the
# scene. The encoder's cache keys hold it, and MAP_COLOUR_SCALE.
ENTRY_SCALE = 0.3
# Each cell of the entry encoder's map also gets its colour part (as a colour grid of the map's side has it), times
# this: about as long a vector as the cell's network channels (6.4 against 8.3 for a cell that holds a shape).
MAP_COLOUR_SCALE = 10.0
# ... and where it is: its centre's row and column, from -1 (top, left) to 1, times this (CoordConv's channels, Liu et
# al. 2018). An attention decoder's context is a weighted sum of cells, which keeps what is there but not where; with
# entry and colour channels alone, the attention decoder stated left / right / above / below right in 40 % of the
# judged dev relations, the transformer (which adds a learned embedding per cell) in 37 %: about what saying left or
# right at random gives.
MAP_PLACE_SCALE = 4.0


def library_versions(modules: tuple[str, ...]) -> str:
    """The installed versions of the given modules, as they enter the cache keys: 'PIL-13.0.0|tensorflow-2.21.0'."""
    return "|".join(f"{module}-{importlib.import_module(module).__version__}" for module in modules)


class Encoder:
    name = ""
    weights_id = "none"
    # Decoding: TensorFlow (plain JPEG and PNG) and Pillow (everything else, see captioning.data.images); resizing and
    # the colour part: TensorFlow. NumPy only carries the decoded pixels, unchanged, so it is not among them.
    libraries = ("PIL", "tensorflow")

    def __init__(self, config: Config, mirrored: bool = False):
        self.image_size = config.image_size
        self.grid = config.feature_grid
        # The features of the horizontally mirrored image, with the grid cells mirrored back, so that cell (i, j)
        # describes the same part of the scene as in the plain features and the two can be averaged.
        self.mirrored = mirrored
        self.colour_grid = config.colour_grid
        self.runtime = config.encoder_runtime
        self.precision = config.inference_precision
        # int8: an openvino_runtime.Calibration (used if this machine has no int8 network yet); the (IR, checksum)
        self.calibration, self._quantized = None, None
        if self.runtime == "openvino":
            import_openvino()  # before library_versions imports it: without its telemetry (see openvino_runtime)
            self.precision = inference_precision(config.inference_precision)  # f32 where bf16 is not native
            self.libraries = (*self.libraries, "openvino")

    @property
    def _runtime_tag(self) -> tuple[str, str]:
        """What the runtime adds to the keys' hashed text and to their names: nothing for TensorFlow."""
        if self.runtime == "tensorflow":
            return "", ""
        checksum = f"-{self.quantized_network()[1]}" if self.precision == "int8" else ""  # (networks' encoders)
        return f"|{self.runtime}-{self.precision}{checksum}", f"-{self.runtime}-{self.precision}"

    @property
    def key(self) -> str:
        """Identifies what the features mean: same key, interchangeable features."""
        text = f"{self.name}|{self.weights_id}|{self.image_size}|{self.grid}|{PREPROCESSING}"
        runtime_text, runtime_name = self._runtime_tag
        text += f"|{library_versions(self.libraries)}{runtime_text}"
        colour = mirror = ""
        if self.colour_grid:  # only then, so that the keys of caches without colour stay as they were
            text += f"|colour{self.colour_grid}|{COLOUR_VERSION}"
            colour = f"-c{self.colour_grid}"
        if self.mirrored:
            text += "|mirrored"
            mirror = "-mirrored"
        return (f"{self.name}-{self.image_size}px{runtime_name}-g{self.grid}{colour}{mirror}-"
                + hashlib.sha256(text.encode()).hexdigest()[:12])

    @property
    def map_key(self) -> str:
        """Identifies what the cached maps mean (the grid and the colour part are derived, not part of it)."""
        return self._map_key(with_runtime=True)

    def _map_key(self, with_runtime: bool) -> str:
        runtime_text, runtime_name = self._runtime_tag if with_runtime else ("", "")
        libraries = self.libraries if with_runtime else type(self).libraries
        text = f"{self.name}|{self.weights_id}|{self.image_size}|{PREPROCESSING}|map"
        text += ("|mirrored" if self.mirrored else "") + f"|{library_versions(libraries)}{runtime_text}"
        return (f"{self.name}-{self.image_size}px{runtime_name}{'-mirrored' if self.mirrored else ''}-"
                + hashlib.sha256(text.encode()).hexdigest()[:12])

    @property
    def colour_key(self) -> str:
        """Identifies the cached colour parts (colour_grid > 0 only). TensorFlow computes them from the pixels
        whatever runs the network, so every runtime shares them."""
        text = f"{self._map_key(with_runtime=False)}|colour{self.colour_grid}|{COLOUR_VERSION}"
        return f"colour-{self.image_size}px-c{self.colour_grid}-" + hashlib.sha256(text.encode()).hexdigest()[:12]

    def _prepare(self, image: tf.Tensor) -> tf.Tensor:
        return tf.image.flip_left_right(image) if self.mirrored else image

    def _unmirror(self, features: tf.Tensor, grid: int) -> tf.Tensor:
        """Mirror the grid cells of a mirrored image's features back (columns reversed; a 1 x 1 grid is itself)."""
        if not self.mirrored or grid == 1:
            return features
        cells = tf.reshape(features, (tf.shape(features)[0], grid, grid, -1))
        return tf.reshape(tf.reverse(cells, axis=[2]), tf.shape(features))

    def _unmirror_maps(self, maps: tf.Tensor) -> tf.Tensor:
        return tf.reverse(maps, axis=[2]) if self.mirrored else maps

    def _unmirror_array(self, maps: np.ndarray) -> np.ndarray:
        """_unmirror_maps without TensorFlow (a reversed view, copied once by the caller's float16 rounding)."""
        return maps[:, :, ::-1] if self.mirrored else maps

    @property
    def dim(self) -> int:
        if not self.colour_grid:
            return self.base_dim
        return self.base_dim + self.colour_grid ** 2 * (COLOUR_BINS ** 3 + 1) + COLOUR_BINS ** 3

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

    def encode_maps(self, images: tf.Tensor) -> "tf.Tensor | np.ndarray":
        """A batch of preprocessed images -> (B, h, w, channels) float32 maps, columns mirrored back (a tensor or
        an array: callers read it with np.asarray)."""
        raise NotImplementedError

    def encode_colour(self, images: tf.Tensor) -> tf.Tensor:
        """A batch of preprocessed images -> (B, colour_dim) colour parts, cells mirrored back."""
        cells, background = colour_features(self.unit_rgb(images), self.colour_grid)
        return tf.concat([self._unmirror(cells, self.colour_grid), background], axis=1)

    def derive(self, maps: np.ndarray, colour: np.ndarray | None = None) -> np.ndarray:
        """Maps (as cached: float16) and colour parts -> (B, dim) float32 feature vectors."""
        features = _grid_pool(tf.cast(tf.convert_to_tensor(maps), tf.float32), self.grid).numpy()
        return features if colour is None else np.concatenate([features, colour], axis=1)

    def encode_inputs(self, images: list[np.ndarray], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 arrays of any size -> (feature vectors, float16 maps), without the file pipeline (used when
        captioning). The maps are rounded to float16 as the cache keeps them, so both paths see the same values."""
        vectors, maps = [], []
        for start in range(0, len(images), batch_size):
            batch = tf.stack([self.preprocess(tf.convert_to_tensor(im)) for im in images[start:start + batch_size]])
            batch_maps = np.asarray(self.encode_maps(batch)).astype(np.float16)
            colour = self.encode_colour(batch).numpy() if self.colour_grid else None
            vectors.append(self.derive(batch_maps, colour))
            maps.append(batch_maps)
        if not vectors:
            return np.zeros((0, self.dim), np.float32), np.zeros((0, 1, 1, 1), np.float16)
        return np.concatenate(vectors), np.concatenate(maps)

    def encode(self, images: list[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """RGB uint8 arrays of any size -> feature vectors (see encode_inputs)."""
        return self.encode_inputs(images, batch_size)[0]


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
    image = tf.cast(image, tf.float32)
    return tf.image.resize(image, (size, size), method="bilinear", antialias=True)


def _grid_pool(maps: tf.Tensor, grid: int) -> tf.Tensor:
    """(B, h, w, c) -> (B, grid * grid * c): averages over a grid x grid partition of the map."""
    if grid == 1:
        return tf.reduce_mean(maps, axis=(1, 2))
    pooled = tf.image.resize(maps, (grid, grid), method="area")
    return tf.reshape(pooled, (tf.shape(maps)[0], grid * grid * maps.shape[-1]))


def _soft_histogram(pixels: tf.Tensor) -> tf.Tensor:
    """(..., 3) RGB in [0, 1] -> (..., COLOUR_BINS ** 3) bin weights that sum to 1."""
    levels = tf.linspace(0.0, 1.0, COLOUR_BINS)
    weights = tf.nn.relu(1.0 - tf.abs(pixels[..., None] - levels) * (COLOUR_BINS - 1))  # (..., 3, bins)
    red, green, blue = weights[..., 0, :], weights[..., 1, :], weights[..., 2, :]
    joint = red[..., :, None, None] * green[..., None, :, None] * blue[..., None, None, :]
    return tf.reshape(joint, tf.concat([tf.shape(pixels)[:-1], [COLOUR_BINS ** 3]], axis=0))


def colour_features(images: tf.Tensor, grid: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(B, S, S, 3) RGB in [0, 1] -> the cells (B, grid * grid * (COLOUR_BINS ** 3 + 1)), each the foreground's
    colour histogram and share of the cell, and the background's colour (B, COLOUR_BINS ** 3); see COLOUR_VERSION."""
    images = tf.clip_by_value(images, 0.0, 1.0)
    border = tf.concat([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], axis=1)  # (B, 4S, 3)
    background = tf.sort(border, axis=1)[:, border.shape[1] // 2]  # (B, 3)
    distance = tf.reduce_max(tf.abs(images - background[:, None, None, :]), axis=-1)
    foreground = tf.clip_by_value((distance - FOREGROUND[0]) / (FOREGROUND[1] - FOREGROUND[0]), 0.0, 1.0)
    batch = tf.shape(images)[0]
    share = tf.reshape(_grid_pool(foreground[..., None], grid), (batch, grid * grid, 1))
    histogram = _grid_pool(_soft_histogram(images) * foreground[..., None], grid)
    histogram = tf.reshape(histogram, (batch, grid * grid, COLOUR_BINS ** 3)) / (share + 0.02)
    cells = tf.reshape(tf.concat([histogram, share], axis=-1), (batch, -1))
    return COLOUR_SCALE * cells, COLOUR_SCALE * _soft_histogram(background)


class XceptionEncoder(Encoder):
    name = "xception"
    libraries = (*Encoder.libraries, "keras")  # Keras builds the network that computes the maps

    def __init__(self, config: Config, mirrored: bool = False):
        super().__init__(config, mirrored)
        smallest = encoder_spec(self.name).min_size
        if self.image_size < smallest:
            raise ConfigError(f"the xception encoder needs image_size >= {smallest}, got {self.image_size}")
        self.weights_id = f"imagenet-{XCEPTION_SHA256[:16]}"
        self._call = None

    @property
    def base_dim(self) -> int:
        return 2048 * self.grid * self.grid

    def _network(self):
        """ImageNet Xception without its top, for this input size (Keras; OpenVINO converts it once)."""
        import keras

        model = keras.applications.Xception(weights=None, include_top=False, pooling=None,
                                            input_shape=(self.image_size, self.image_size, 3))
        model.set_weights(xception_weights())
        model.trainable = False
        return model

    @property
    def network_key(self) -> str:
        """Names this encoder's network converted to OpenVINO IR (its name, weights and input size)."""
        return ir_key(self.name, self.weights_id, self.image_size)

    def quantized_network(self, log=print):
        """(the int8 network's IR, its checksum): quantized once, on `calibration`'s images (see prepare)."""
        if self._quantized is None:
            self._quantized = quantized_ir(self.network_key, self._network, self.calibration, log)
        return self._quantized

    def network_ir(self, log=print):
        """This encoder's network as OpenVINO IR, the Path of its model.xml (for the inference export; in int8 the
        quantized IR): converted once into the cache, and compiled here (a cached IR that does not read converts)."""
        if self.runtime == "openvino" and self.precision == "int8":
            return self.quantized_network(log)[0]
        compiled_ir(self.network_key, self._network, "f32", log)
        return converted_ir(self.network_key, self._network, log)

    def _build(self):
        if self.runtime == "openvino":
            network = compiled_ir(self.network_key, self._network, self.precision, calibration=self.calibration)
            self._call = lambda images: self._unmirror_array(network(np.asarray(images)))
            return
        model = self._network()
        self._call = graph_function(lambda x: self._unmirror_maps(model(x, training=False)), reduce_retracing=True)

    def preprocess(self, image: tf.Tensor) -> tf.Tensor:
        return _resize(self._prepare(image), self.image_size) / 127.5 - 1.0  # Xception's scaling to [-1, 1]

    def unit_rgb(self, images: tf.Tensor) -> tf.Tensor:
        return (images + 1.0) / 2.0

    def encode_maps(self, images: tf.Tensor) -> tf.Tensor:
        if self._call is None:
            self._build()
        return self._call(images)


class XceptionEntryEncoder(XceptionEncoder):
    """Xception up to the end of its entry flow: 728 channels, as the middle flow reads them (block 4's residual sum
    through a ReLU) times ENTRY_SCALE, averaged over 2 x 2 cells to the whole network's map side (1/32 of the
    input's), then the colour part of each cell
    (COLOUR_BINS ** 3 + 1 channels, times MAP_COLOUR_SCALE) and its place (2 channels, MAP_PLACE_SCALE): a decoder
    that attends to a cell sees which shape is there, its colour and where it is, without having to bind them from
    several places of its input."""

    name = "xception-entry"
    channels = 728 + COLOUR_BINS ** 3 + 1 + 2

    def __init__(self, config: Config, mirrored: bool = False):
        super().__init__(config, mirrored)
        # what the maps are, in every cache key
        self.weights_id += (f"-relu-x{ENTRY_SCALE:g}-pool2-colour-{COLOUR_VERSION}-x{MAP_COLOUR_SCALE:g}"
                            f"-place-x{MAP_PLACE_SCALE:g}")

    @property
    def base_dim(self) -> int:
        return self.channels * self.grid * self.grid

    def encode_maps(self, images: tf.Tensor) -> tf.Tensor:
        maps = super().encode_maps(images)  # columns mirrored back already
        side = maps.shape[1]
        cells, _ = colour_features(self.unit_rgb(images), side)
        colour = tf.reshape(cells * (MAP_COLOUR_SCALE / COLOUR_SCALE), (-1, side, side, COLOUR_BINS ** 3 + 1))
        centres = (tf.range(side, dtype=tf.float32) + 0.5) / side * 2.0 - 1.0
        rows, columns = tf.meshgrid(centres, centres, indexing="ij")
        place = MAP_PLACE_SCALE * tf.stack([rows, columns], axis=-1)[None]  # the same for a mirrored image
        place = tf.tile(place, [tf.shape(maps)[0], 1, 1, 1])
        return tf.concat([maps, self._unmirror_maps(colour), place], axis=-1)

    def _network(self):
        import keras

        full = super()._network()
        # The middle flow's first layer is the ReLU of block 4's sum; Keras' Xception names it, not the sums (they are
        # numbered in the order the process builds them).
        entry = full.get_layer("block5_sepconv1_act").output
        # A cell per place of the whole network's map: on the embedded scenes (96 px: 3 x 3) one cell per place of
        # their layout, so that a decoder attends to one cell for one shape rather than to the four around it.
        pooled = keras.layers.AveragePooling2D(2, padding="same")(keras.layers.Rescaling(ENTRY_SCALE)(entry))
        return keras.Model(full.input, pooled, name="xception_entry")


class PixelEncoder(Encoder):
    name = "pixels"

    @property
    def base_dim(self) -> int:
        return self.grid * self.grid * 3

    def preprocess(self, image: tf.Tensor) -> tf.Tensor:
        return _resize(self._prepare(image), self.image_size) / 255.0

    def unit_rgb(self, images: tf.Tensor) -> tf.Tensor:
        return images

    def encode_maps(self, images: tf.Tensor) -> tf.Tensor:
        size = min(PIXEL_MAP, self.image_size)
        return self._unmirror_maps(tf.image.resize(images, (size, size), method="area"))


# the built-in classes (registered in features)
ENCODERS = {"xception": XceptionEncoder, "xception-entry": XceptionEntryEncoder, "pixels": PixelEncoder}


def make_encoder(config: Config, mirrored: bool = False) -> Encoder:
    """The encoder config.encoder names (registered in captioning.features)."""
    return encoder_spec(config.encoder).build(config, mirrored)


def feature_key(config: Config) -> str:
    """Equal keys, equal prepared features (the encoder's cache key, plus how mirrored features are used)."""
    key = make_encoder(config).key
    return f"{key}+flip-{config.flip_mode}" if config.feature_flip else key
