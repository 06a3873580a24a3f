"""What a decoder reads per image, without TensorFlow (the exported captioner builds these too, see
captioning.inference): ImageInputs (the feature vectors and the maps, row-aligned) and MemberInputs (an ensemble's
parts when its members read different features). The maps are an array or a store's MapView (features.store)."""
from __future__ import annotations

import numpy as np


class ImageInputs:
    """What the attention decoder reads per image: the feature vectors and the maps, row-aligned. Sliced and
    indexed like an array (an index array reads those maps)."""

    def __init__(self, features: np.ndarray, maps):
        self.features, self.maps = features, maps

    def __len__(self) -> int:
        return len(self.features)

    @property
    def shape(self) -> tuple[int, ...]:
        maps = self.maps
        return (*self.features.shape, *((maps.positions, maps.channels) if not isinstance(maps, np.ndarray)
                                        else maps.shape[1:]))

    def __getitem__(self, index) -> "ImageInputs":
        return ImageInputs(self.features[index], self.maps[index])

    def load(self) -> "ImageInputs":
        """The same rows with their maps read into memory (float32)."""
        return self if isinstance(self.maps, np.ndarray) else ImageInputs(self.features, self.maps.read())


class MemberInputs:
    """An ensemble's inputs when its members read different features: one part per feature setting (in the order of
    Captioner.feature_groups), each a single model's inputs, sliced and loaded together."""

    def __init__(self, parts: list):
        self.parts = list(parts)

    def __len__(self) -> int:
        return len(self.parts[0])

    def __getitem__(self, index) -> "MemberInputs":
        return MemberInputs([part[index] for part in self.parts])

    def load(self) -> "MemberInputs":
        """Every part read into memory (maps read from the cache are read when loaded; see decode._batches)."""
        return MemberInputs([part.load() if hasattr(part, "load") else part for part in self.parts])
