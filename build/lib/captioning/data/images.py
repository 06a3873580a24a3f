"""Reading images: the one definition of how a file, bytes or an array becomes an RGB uint8 array.

Plain RGB or grayscale JPEG and PNG files take TensorFlow's fast decoder in the feature pipeline; everything else
(alpha, palette, CMYK, 16-bit, EXIF rotation, other formats) goes through `load_rgb`, so that training and captioning
see the same pixels.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageSource = Union[str, Path, bytes, np.ndarray, Image.Image]
_ORIENTATION_TAG = 0x0112


class ImageError(ValueError):
    """An image that cannot be read."""


class TooManyPixels(ImageError):
    """An image with more pixels than Pillow's decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS)."""


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    sha256: str
    mode: str  # PIL mode of the file (RGB, L, RGBA, P, CMYK, ...)
    needs_pil: bool  # True when TensorFlow's decoder would not give the same RGB pixels as load_rgb


def _to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(source: ImageSource) -> np.ndarray:
    """An (H, W, 3) uint8 array from a path, encoded bytes, an array (H x W, H x W x 1/3/4) or a PIL image."""
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    try:
        if isinstance(source, Image.Image):
            image = source
        elif isinstance(source, (bytes, bytearray)):
            image = Image.open(io.BytesIO(source))
        else:
            image = Image.open(Path(source))
        return np.asarray(_to_rgb(image), dtype=np.uint8)
    except FileNotFoundError:
        raise ImageError(f"image file {source} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        name = source if isinstance(source, (str, Path)) else f"{type(source).__name__} input"
        error = TooManyPixels if isinstance(exc, Image.DecompressionBombError) else ImageError
        raise error(f"cannot read image {name}: {exc}") from None


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ImageError(f"an image array must be H x W, H x W x 3 or H x W x 4, got shape {array.shape}")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.max(initial=0) <= 1.0:
            array = array * 255.0
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.shape[-1] == 4:
        return np.asarray(_to_rgb(Image.fromarray(array, "RGBA")))
    return array


def inspect_image(path: Path) -> ImageInfo:
    """Hash the file and decode it cheaply (JPEG at reduced scale) to catch truncated or corrupt data early."""
    data = Path(path).read_bytes()
    try:
        image = Image.open(io.BytesIO(data))
        fmt, mode = image.format, image.mode
        rotated = image.getexif().get(_ORIENTATION_TAG, 1) not in (1, None)
        image.draft("RGB", (64, 64))  # JPEG only: decodes every block but at 1/8 scale
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{type(exc).__name__}: {exc}") from None
    plain = fmt in ("JPEG", "PNG") and mode in ("RGB", "L") and "transparency" not in image.info
    return ImageInfo(hashlib.sha256(data).hexdigest(), mode, needs_pil=not plain or rotated)
