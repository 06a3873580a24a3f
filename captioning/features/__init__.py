"""Image features: the registry of encoders, and the code that turns a dataset's images into cached maps and
feature vectors (encoders.py, weights.py, store.py, prepare.py).

An encoder registers an `EncoderSpec`: its name (the config's `encoder`), the smallest input size it takes, the
shape of its spatial map for an input size, and `build(config, mirrored)`, which returns a
captioning.features.encoders.Encoder (subclass it: `preprocess`, `unit_rgb`, `encode_maps`, `base_dim`):

    from captioning.features import EncoderSpec, register_encoder

    register_encoder(EncoderSpec(name="tiny", build=TinyEncoder, min_size=8,
                                 map_shape=lambda size: (4, 4, 3)))

The built-in encoders are registered below, importing their TensorFlow code only when first built.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from captioning.core.plugins import Registry, lazy

REGISTRY = Registry("encoder")
encoder_names, encoder_spec = REGISTRY.names, REGISTRY.spec
register_encoder = REGISTRY.register


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    name: str
    build: Callable[..., Any]  # (config, mirrored=False) -> Encoder
    map_shape: Callable[[int], tuple[int, int, int]]  # input size -> (height, width, channels) of its map
    min_size: int = 1  # the smallest image_size it takes
    description: str = ""
    runtimes: tuple[str, ...] = ("tensorflow",)  # the encoder_runtime values it runs on (see config.RUNTIMES)


def _xception_side(size: int, poolings: int = 4) -> int:
    """Xception's map side: two valid 3 x 3 convolutions (the first of stride 2), then four stride-2 poolings (three
    up to the end of its entry flow)."""
    side = (size - 3) // 2 + 1 - 2
    for _ in range(poolings):
        side = (side + 1) // 2
    return side


PIXEL_MAP = 8  # the pixel encoder's map: the image area-averaged to at most 8 x 8

register_encoder(EncoderSpec(
    name="xception", build=lazy("captioning.features.encoders", "XceptionEncoder"), min_size=71,
    map_shape=lambda size: (_xception_side(size), _xception_side(size), 2048), runtimes=("tensorflow", "openvino"),
    description="ImageNet Xception without its top (weights from an installed package, offline)"))
# Where each shape is: a linear probe on the entry flow's map pooled to the embedded scenes' 3 x 3 layout names the
# shape in every occupied cell of the 250 dev scenes (96 and 128 px); on the whole network's map, 35-41 % of them
# (docs/results/2026-12-07-scenes.md). The middle and exit flows, two thirds of the cost, trade place for ImageNet's
# classes.
register_encoder(EncoderSpec(
    name="xception-entry", build=lazy("captioning.features.encoders", "XceptionEntryEncoder"), min_size=71,
    map_shape=lambda size: (_xception_side(size), _xception_side(size), 728 + 217 + 2),  # 217: encoders.py's
    # COLOUR_BINS ** 3 + 1
    description="ImageNet Xception's entry flow (blocks 1-4: 728 channels, where simple shapes are still told apart "
                "place by place) at the whole network's map side, each cell's colours (217 channels) and place (2)"))
register_encoder(EncoderSpec(
    name="pixels", build=lazy("captioning.features.encoders", "PixelEncoder"),
    map_shape=lambda size: (min(PIXEL_MAP, size), min(PIXEL_MAP, size), 3),
    description="the image area-averaged to an 8 x 8 colour map: no weights, for tests and sanity runs"))
