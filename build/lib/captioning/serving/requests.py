"""What the served captioner accepts from a client: images as bytes or base64 text, a bounded batch, a bounded beam.

A client's string is never opened as a file on the server: a path is refused in the same words whether or not the
file exists, so a request can neither read the server's files nor learn which exist. Trusted batch scoring on the
serving machine can allow paths with CAPTIONING_SERVE_LOCAL_PATHS=1. Every refusal is a RequestError, which MLflow's
scoring server answers with HTTP 400 and the message (not a 500 with a traceback).
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import os
import re
from pathlib import Path

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from PIL import Image

from captioning.data.images import ImageError, TooManyPixels, load_rgb

MAX_BEAM_WIDTH = 10  # as far as the app's slider goes; a step of beam search costs width x rows decoder calls
MAX_ROWS = 64  # images in one request, unless $CAPTIONING_SERVE_MAX_ROWS says otherwise
# Decoded pixels a request may hold (from the images' headers, before decoding): a captioner looks at 299 x 299, so
# this only stops requests made to exhaust the server's memory (a few small, highly compressed huge PNGs).
MAX_IMAGE_PIXELS = 50_000_000  # one image (a 50-megapixel photo; Pillow's own bomb limit is 179 million)
MAX_REQUEST_PIXELS = 200_000_000  # all of a request's images (about 600 MB decoded)
LOCAL_PATHS_VARIABLE = "CAPTIONING_SERVE_LOCAL_PATHS"
MAX_ROWS_VARIABLE = "CAPTIONING_SERVE_MAX_ROWS"
_PATH_LIKE = re.compile(r"[/\\.~:]")  # base64 text has no dots, tildes, colons or backslashes; paths mostly do


class RequestError(MlflowException):
    """A request the served captioner refuses: a client's mistake, answered with HTTP 400 and this one line."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


@dataclasses.dataclass(frozen=True)
class RequestRules:
    max_rows: int = MAX_ROWS
    local_paths: bool = False  # read strings that name a file on this machine as that file (trusted callers only)

    @classmethod
    def from_environment(cls) -> "RequestRules":
        """The serving machine's settings, read once when the model loads."""
        switch = os.environ.get(LOCAL_PATHS_VARIABLE, "")
        if switch not in ("", "0", "1"):
            raise ValueError(f"${LOCAL_PATHS_VARIABLE} is {switch!r}; set it to 1 to read server paths, or unset it")
        rows = os.environ.get(MAX_ROWS_VARIABLE, str(MAX_ROWS))
        if not rows.isdigit() or int(rows) < 1:
            raise ValueError(f"${MAX_ROWS_VARIABLE} is {rows!r}; set it to a whole number of images, at least 1")
        return cls(max_rows=int(rows), local_paths=switch == "1")

    def images(self, values: list) -> list[np.ndarray]:
        """Each row's RGB pixels; the first row that cannot be read ends the request with its index."""
        if not values:
            raise RequestError("the request holds no images; send one row per image")
        if len(values) > self.max_rows:
            raise RequestError(f"the request holds {len(values)} images and this server takes at most {self.max_rows}"
                               " per request; send them in several requests")
        sources, total = [], 0
        for row, value in enumerate(values):  # every row is checked before any is decoded
            source = self._source(row, value)
            total += self._size(row, source)
            if total > MAX_REQUEST_PIXELS:
                raise RequestError(f"the request's images up to row {row} hold {total:,} pixels and this server "
                                   f"decodes at most {MAX_REQUEST_PIXELS:,} per request; send fewer or smaller images")
            sources.append(source)
        return [self._pixels(row, source) for row, source in enumerate(sources)]

    def _size(self, row: int, source: bytes | Path) -> int:
        """The image's pixel count from its header (nothing decoded); 0 if there is none to read (load_rgb then
        says what is wrong)."""
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                pixels = image.width * image.height
        except Exception:
            return 0
        if pixels > MAX_IMAGE_PIXELS:
            raise RequestError(f"row {row} has more pixels than this server reads ({pixels:,}; at most "
                               f"{MAX_IMAGE_PIXELS:,} per image); send a smaller image")
        return pixels

    def _pixels(self, row: int, source: bytes | Path) -> np.ndarray:
        try:
            return load_rgb(source)
        except TooManyPixels:
            raise RequestError(f"row {row} has more pixels than this server reads ({2 * Image.MAX_IMAGE_PIXELS:,}); "
                               "send a smaller image") from None
        except ImageError as exc:
            if self.local_paths:  # a trusted caller may learn which of its paths failed and why
                raise RequestError(f"row {row}: {exc}") from None
            raise RequestError(f"row {row} is not an image this server can read; send the bytes of a JPEG, PNG or "
                               "WebP file, base64-encoded") from None

    def _source(self, row: int, value) -> bytes | Path:
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if not isinstance(value, str):
            raise RequestError(f"row {row} is a {type(value).__name__}; send image bytes as base64 text")
        text = value.strip()
        if self.local_paths and not text.startswith("data:") and _is_file(text):
            return Path(text)
        if text.startswith("data:"):  # a data URL: data:image/jpeg;base64,....
            header, _, text = text.partition(",")
            if not header.endswith(";base64"):
                raise RequestError(f"row {row} is a data: URL without ;base64 content; send the image base64-encoded")
        text = "".join(text.split())  # base64 wrapped over lines (as `base64 photo.jpg` prints it) is still base64
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            pass
        if _PATH_LIKE.search(text):
            if self.local_paths:
                return Path(value.strip())  # not a file: load_rgb says so, naming it
            raise RequestError(f"row {row} looks like a file path or URL; this server opens none named in a request: "
                               "send the image's bytes, base64-encoded")
        raise RequestError(f"row {row} is not base64 text; send the image's bytes, base64-encoded")


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a name too long for the file system, or with a NUL byte
        return False


def beam_width(params: dict | None, model_default: int) -> int:
    """The request's `beam_width` (1 greedy .. MAX_BEAM_WIDTH), or the model's own for 0 or none."""
    value = (params or {}).get("beam_width") or 0
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value <= MAX_BEAM_WIDTH:
        return int(value) or model_default
    raise RequestError(f"beam_width is {value!r}; give 1 (greedy) to {MAX_BEAM_WIDTH}, or 0 for the model's own "
                       f"({model_default})")
