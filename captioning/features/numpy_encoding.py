"""The built-in encoders' image side in NumPy, for inference without TensorFlow (captioning.inference): the resize
and scaling of `preprocess`, the pixel encoder's map, the grid pooling of `derive` and the colour part, computing what
captioning.features.encoders computes with TensorFlow (to float32 rounding: tests/test_export.py compares them).
Xception's network (or its entry flow) itself runs as OpenVINO IR (captioning.features.openvino_runtime).

Both resizes are linear maps along each axis, applied as two matrix products: TensorFlow's antialiased bilinear
resize (scale_and_translate with a triangle kernel, widened by the scale when shrinking, its weights normalised to
sum to 1) and its area resize (each output cell the mean of the input it covers, partial pixels weighted by the part
covered).

The colour part's constants are those of encoders.py, which imports TensorFlow; the export checks that they agree
(captioning.inference.export) and writes COLOUR_VERSION and PREPROCESSING into the export, which the runtime checks.
The xception-entry encoder's network (Xception's entry flow, ENTRY_SCALE and the 2 x 2 pooling) is in its IR, and
the channels that follow it in each cell of its map, the cell's colour and place, are computed here (`map_cells`).
"""
from __future__ import annotations

import functools

import numpy as np

PREPROCESSING = "jpeg-accurate-dct"  # encoders.PREPROCESSING
COLOUR_BINS = 6  # encoders.COLOUR_BINS, FOREGROUND, COLOUR_SCALE and COLOUR_VERSION
FOREGROUND = (0.15, 0.3)
COLOUR_SCALE = 40.0
COLOUR_VERSION = f"fg{FOREGROUND[0]:g}-{FOREGROUND[1]:g}-rgb{COLOUR_BINS}-x{COLOUR_SCALE:g}"
PIXEL_MAP = 8  # captioning.features.PIXEL_MAP
MAP_COLOUR_SCALE = 10.0  # encoders.MAP_COLOUR_SCALE and MAP_PLACE_SCALE: the xception-entry map's cell channels
MAP_PLACE_SCALE = 4.0
# name -> (divisor, offset): preprocess is resized / divisor + offset, and unit_rgb (x - offset) * divisor / 255
SCALING = {"xception": (127.5, -1.0), "xception-entry": (127.5, -1.0), "pixels": (255.0, 0.0)}
NETWORKS = ("xception", "xception-entry")  # the encoders whose maps come from a network (its IR, in an export)
WITH_CELLS = ("xception-entry",)  # ... whose maps then hold each cell's colour and place (map_cells)


@functools.lru_cache(maxsize=64)
def bilinear_weights(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of TensorFlow's bilinear resize with antialias along one axis."""
    scale = size_out / size_in
    kernel_scale = max(1.0 / scale, 1.0)
    centres = (np.arange(size_out) + 0.5) / scale  # each output sample's position in input pixels
    inputs = np.arange(size_in) + 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(inputs[None, :] - centres[:, None]) / kernel_scale)
    totals = weights.sum(axis=1, keepdims=True)
    return (weights / np.where(totals > 0, totals, 1.0)).astype(np.float32)


@functools.lru_cache(maxsize=64)
def area_weights(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of TensorFlow's area resize along one axis: the share of each input pixel in the
    output cell's span, over the span's length."""
    scale = size_in / size_out
    starts, ends = np.arange(size_out) * scale, (np.arange(size_out) + 1) * scale
    pixels = np.arange(size_in)
    covered = np.clip(np.minimum(pixels[None, :] + 1, ends[:, None]) - np.maximum(pixels[None, :], starts[:, None]),
                      0.0, None)
    return (covered / scale).astype(np.float32)


def _resize(images: np.ndarray, size: int, weights) -> np.ndarray:
    """(B, H, W, C) -> (B, size, size, C) by `weights`(size_in, size_out) along the rows, then the columns."""
    rows = weights(images.shape[1], size)
    columns = weights(images.shape[2], size)
    out = np.einsum("oh,bhwc->bowc", rows, images.astype(np.float32, copy=False), optimize=True)
    return np.einsum("pw,bowc->bopc", columns, out, optimize=True)


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """One (H, W, 3) image -> (size, size, 3) float32, as tf.image.resize(bilinear, antialias=True)."""
    return _resize(image[None], size, bilinear_weights)[0]


def resize_area(images: np.ndarray, size: int) -> np.ndarray:
    """(B, H, W, C) -> (B, size, size, C) float32, as tf.image.resize(method="area")."""
    return _resize(images, size, area_weights)


def grid_pool(maps: np.ndarray, grid: int) -> np.ndarray:
    """(B, h, w, c) -> (B, grid * grid * c): averages over a grid x grid partition of the map (encoders._grid_pool)."""
    maps = maps.astype(np.float32, copy=False)
    if grid == 1:
        return maps.mean(axis=(1, 2), dtype=np.float32)
    return resize_area(maps, grid).reshape(len(maps), -1)


def soft_histogram(pixels: np.ndarray) -> np.ndarray:
    """(..., 3) RGB in [0, 1] -> (..., COLOUR_BINS ** 3) bin weights that sum to 1 (encoders._soft_histogram)."""
    levels = np.linspace(0.0, 1.0, COLOUR_BINS, dtype=np.float32)
    weights = np.maximum(0.0, 1.0 - np.abs(pixels[..., None] - levels) * (COLOUR_BINS - 1))  # (..., 3, bins)
    red, green, blue = weights[..., 0, :], weights[..., 1, :], weights[..., 2, :]
    joint = red[..., :, None, None] * green[..., None, :, None] * blue[..., None, None, :]
    return joint.reshape(*pixels.shape[:-1], COLOUR_BINS ** 3).astype(np.float32, copy=False)


@functools.lru_cache(maxsize=16)
def _cell_weights(size: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel of a size x size image (row-major), the grid cells it falls in and its weight in each (the area
    resize's weights, so that summing a pixel quantity by these gives grid_pool of it): two (pixels, k) arrays, k the
    most cells a pixel shares (1 where the grid divides the size), padded with weight 0."""
    weights = np.einsum("ai,bj->ijab", area_weights(size, grid), area_weights(size, grid)).reshape(size * size, -1)
    k = max(1, int((weights > 0).sum(axis=1).max()))
    order = np.argsort(-weights, axis=1, kind="stable")[:, :k]
    return order.astype(np.int64), np.take_along_axis(weights, order, axis=1).astype(np.float64)


def cell_histograms(images: np.ndarray, foreground: np.ndarray, grid: int) -> np.ndarray:
    """grid_pool(soft_histogram(images) * foreground, grid) without the (..., COLOUR_BINS ** 3) array per pixel: each
    channel's triangle weights are non-zero at two neighbouring levels at most, so a pixel adds to at most 8 joint
    bins, which one bincount sums per cell (in float64). (B, S, S, 3), (B, S, S) -> (B, grid * grid * bins ** 3)."""
    batch, size, bins = len(images), images.shape[1], COLOUR_BINS
    scaled = images.reshape(batch, size * size, 3) * np.float32(bins - 1)
    low = np.clip(np.floor(scaled), 0, bins - 2)
    upper = np.clip(scaled - low, 0.0, 1.0)  # the weight of level low + 1; low's is 1 - upper, as the triangle gives
    levels = np.stack([1.0 - upper, upper], axis=-1)  # (B, P, 3, 2)
    weight = (levels[:, :, 0, :, None, None] * levels[:, :, 1, None, :, None] * levels[:, :, 2, None, None, :])
    weight = weight.reshape(batch, size * size, 8) * foreground.reshape(batch, size * size, 1)
    corners = np.array([r * bins * bins + g * bins + b for r in (0, 1) for g in (0, 1) for b in (0, 1)])
    index = (low.astype(np.int64) @ np.array([bins * bins, bins, 1]))[:, :, None] + corners  # (B, P, 8)
    cells, cell_weight = _cell_weights(size, grid)  # (P, k)
    flat = (np.arange(batch)[:, None, None, None] * (grid * grid) + cells[None, :, :, None]) * bins ** 3
    flat = flat + index[:, :, None, :]  # (B, P, k, 8)
    total = np.bincount(flat.ravel(), (weight[:, :, None, :] * cell_weight[None, :, :, None]).ravel(),
                        minlength=batch * grid * grid * bins ** 3)
    return total.reshape(batch, grid * grid * bins ** 3).astype(np.float32)


def colour_features(images: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, S, S, 3) RGB in [0, 1] -> the foreground's colour cells and the background's colour
    (encoders.colour_features)."""
    images = np.clip(images, 0.0, 1.0)
    border = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], axis=1)
    background = np.sort(border, axis=1)[:, border.shape[1] // 2]  # (B, 3)
    distance = np.max(np.abs(images - background[:, None, None, :]), axis=-1)
    foreground = np.clip((distance - FOREGROUND[0]) / (FOREGROUND[1] - FOREGROUND[0]), 0.0, 1.0)
    batch = len(images)
    share = grid_pool(foreground[..., None], grid).reshape(batch, grid * grid, 1)
    histogram = cell_histograms(images, foreground, grid)
    histogram = histogram.reshape(batch, grid * grid, COLOUR_BINS ** 3) / (share + 0.02)
    cells = np.concatenate([histogram, share], axis=-1).reshape(batch, -1)
    return COLOUR_SCALE * cells, COLOUR_SCALE * soft_histogram(background)


def map_cells(cells: np.ndarray, side: int, mirrored: bool) -> np.ndarray:
    """The cells of colour_features(images, side) of (B, S, S, 3) RGB images, mirrored or not -> (B, side, side,
    COLOUR_BINS ** 3 + 3): each cell's colour part (columns mirrored back) and its centre's row and column, as
    XceptionEntryEncoder.encode_maps appends them."""
    colour = (cells * np.float32(MAP_COLOUR_SCALE / COLOUR_SCALE)).reshape(len(cells), side, side, -1)
    colour = colour[:, :, ::-1] if mirrored else colour
    centres = (np.arange(side, dtype=np.float32) + np.float32(0.5)) / np.float32(side) * np.float32(2.0) - 1
    rows, columns = np.meshgrid(centres, centres, indexing="ij")
    place = np.float32(MAP_PLACE_SCALE) * np.stack([rows, columns], axis=-1)  # the same for a mirrored image
    return np.concatenate([colour, np.broadcast_to(place, (len(cells), side, side, 2))], axis=-1, dtype=np.float32)


class ArrayEncoder:
    """A built-in encoder's `encode_inputs` in NumPy: (feature vectors, float16 maps) of RGB uint8 images, as
    captioning.features.encoders.Encoder computes them. `network`: a callable from a float32 batch (B, S, S, 3) to
    maps (B, h, w, c) (Xception's or its entry flow's compiled IR), or None for the pixel encoder, whose map is the
    image shrunk."""

    def __init__(self, name: str, image_size: int, grid: int, colour_grid: int, mirrored: bool, key: str,
                 network=None):
        if name not in SCALING:
            raise ValueError(f"no NumPy encoding of the {name!r} encoder (only {', '.join(SCALING)})")
        if (name in NETWORKS) != (network is not None):
            raise ValueError(f"the {name!r} encoder " + ("needs its network's compiled IR" if name in NETWORKS
                                                         else "has no network"))
        self.name, self.image_size, self.grid, self.colour_grid = name, image_size, grid, colour_grid
        self.mirrored, self.key, self.network = mirrored, key, network
        self.divisor, self.offset = SCALING[name]

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        image = image[:, ::-1] if self.mirrored else image
        return resize_bilinear(image, self.image_size) / np.float32(self.divisor) + np.float32(self.offset)

    def unit_rgb(self, batch: np.ndarray) -> np.ndarray:
        return (batch - np.float32(self.offset)) * np.float32(self.divisor / 255)

    def _colours(self, batch: np.ndarray):
        """colour_features of the batch's images by grid side, each side computed once (the map's cells and the
        colour grid are the same features where their sides are equal, as on the embedded scenes)."""
        unit, done = self.unit_rgb(batch), {}

        def colours(side: int) -> tuple[np.ndarray, np.ndarray]:
            if side not in done:
                done[side] = colour_features(unit, side)
            return done[side]
        return colours

    def encode_maps(self, batch: np.ndarray, colours=None) -> np.ndarray:
        """Preprocessed images -> (B, h, w, c) float32 maps, columns mirrored back. `colours`: the batch's
        colour features by grid side (_colours), shared with encode_colour."""
        if self.network is not None:
            maps = self.network(batch)
        else:
            maps = resize_area(batch, min(PIXEL_MAP, self.image_size))
        maps = maps[:, :, ::-1] if self.mirrored else maps
        if self.name in WITH_CELLS:
            side = maps.shape[1]
            cells = (colours or self._colours(batch))(side)[0]
            maps = np.concatenate([maps, map_cells(cells, side, self.mirrored)], axis=-1)
        return maps

    def encode_colour(self, batch: np.ndarray, colours=None) -> np.ndarray:
        cells, background = (colours or self._colours(batch))(self.colour_grid)
        if self.mirrored and self.colour_grid > 1:
            cells = cells.reshape(len(cells), self.colour_grid, self.colour_grid, -1)[:, :, ::-1].reshape(
                len(cells), -1)
        return np.concatenate([cells, background], axis=1).astype(np.float32)

    def encode_inputs(self, images: list[np.ndarray], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 arrays of any size -> (feature vectors, float16 maps), the maps rounded as the cache keeps them."""
        vectors, maps = [], []
        for start in range(0, len(images), batch_size):
            batch = np.stack([self.preprocess(image) for image in images[start:start + batch_size]])
            colours = self._colours(batch)
            batch_maps = np.asarray(self.encode_maps(batch, colours)).astype(np.float16)
            features = grid_pool(batch_maps.astype(np.float32), self.grid)
            if self.colour_grid:
                features = np.concatenate([features, self.encode_colour(batch, colours)], axis=1)
            vectors.append(features)
            maps.append(batch_maps)
        if not vectors:
            return np.zeros((0, 0), np.float32), np.zeros((0, 1, 1, 1), np.float16)
        return np.concatenate(vectors), np.concatenate(maps)
