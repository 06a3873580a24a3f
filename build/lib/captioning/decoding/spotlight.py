"""Where a decoder looked, drawn over the photo: the app's and the report's attention pictures."""
from __future__ import annotations

import numpy as np
from PIL import Image


def spotlight(rgb: np.ndarray, weights: np.ndarray, size: int = 160) -> np.ndarray:
    """The photo (H, W, 3 uint8) shrunk to `size` px square, lit where one word's attention (h, w) is high and dark
    where it is low, as in Show-Attend-Tell's figures: brightness 0.15 + 0.85 x weight / max weight, the map
    upsampled smoothly (bicubic) to the photo."""
    photo = np.asarray(Image.fromarray(rgb).convert("RGB").resize((size, size), Image.BILINEAR), np.float32)
    heat = np.asarray(Image.fromarray(np.asarray(weights, np.float32), mode="F").resize((size, size), Image.BICUBIC))
    heat = np.clip(heat / max(float(np.max(weights)), 1e-12), 0.0, 1.0)
    return (photo * (0.15 + 0.85 * heat[..., None])).astype(np.uint8)
