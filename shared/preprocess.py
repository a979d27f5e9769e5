"""Per-modality normalisation and the mapping between native slices and the model's square input.

Model input contract: float32 in [0, 1], slices of ``size x size`` pixels; the native ``[y, x]`` slice is
resized keeping its pixel aspect so its longer side is ``size`` (anti-aliased), then zero-padded at the
bottom and right. ``SliceTransform`` holds what is needed to map predictions back exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.manifest import Normalisation

# The model's square input in pixels (LiteMedSAM's 256): the one default of every image-size option.
DEFAULT_IMAGE_SIZE = 256


def normalise(volume: np.ndarray, normalisation: Normalisation) -> np.ndarray:
    """Raw intensities -> float32 in [0, 1]: a fixed window for CT (HU), percentiles of non-zero voxels for MR."""
    if normalisation.scheme == "ct_window":
        lo, hi = normalisation.window
    else:
        body = volume[volume > 0]
        values = body if body.size else volume.ravel()
        lo, hi = np.percentile(values, normalisation.percentiles)
    if hi <= lo:
        return np.zeros(volume.shape, np.float32)
    return ((np.clip(volume, lo, hi) - lo) / (hi - lo)).astype(np.float32)


@dataclass(frozen=True)
class SliceTransform:
    """Native ``(height, width)`` slice <-> padded ``size x size`` model slice."""

    native: tuple[int, int]
    size: int

    @property
    def resized(self) -> tuple[int, int]:
        scale = self.size / max(self.native)
        return tuple(max(1, min(self.size, round(n * scale))) for n in self.native)

    def to_model(self, volume: np.ndarray, *, is_label: bool) -> np.ndarray:
        """``[z, h, w]`` native slices -> ``[z, size, size]``; nearest for labels, anti-aliased linear for images."""
        self._expect(volume, self.native)
        rh, rw = self.resized
        resized = _resize(volume, (rh, rw), is_label=is_label)
        out = np.zeros((volume.shape[0], self.size, self.size), dtype=resized.dtype)
        out[:, :rh, :rw] = resized
        return out

    def to_native(self, volume: np.ndarray, *, is_label: bool) -> np.ndarray:
        """``[z, size, size]`` model slices (labels or probabilities) -> ``[z, h, w]`` on the native grid."""
        self._expect(volume, (self.size, self.size))
        rh, rw = self.resized
        return _resize(volume[:, :rh, :rw], self.native, is_label=is_label)

    def to_json(self) -> dict[str, Any]:
        return {"native": list(self.native), "size": self.size}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SliceTransform:
        return cls(native=tuple(data["native"]), size=int(data["size"]))

    @staticmethod
    def _expect(volume: np.ndarray, hw: tuple[int, int]) -> None:
        if volume.ndim != 3 or tuple(volume.shape[1:]) != tuple(hw):
            raise ValueError(f"expected [z, {hw[0]}, {hw[1]}] slices, got shape {volume.shape}")


def _resize(volume: np.ndarray, hw: tuple[int, int], *, is_label: bool) -> np.ndarray:
    from skimage.transform import resize  # scipy underneath: kept off the CLI's import path

    shape = (volume.shape[0], *hw)
    if tuple(volume.shape) == shape:
        return volume.copy()
    if is_label:
        return resize(volume, shape, order=0, anti_aliasing=False, preserve_range=True).astype(volume.dtype)
    downsampling = any(new < old for new, old in zip(hw, volume.shape[1:], strict=True))
    out = resize(volume, shape, order=1, anti_aliasing=downsampling, preserve_range=True)
    return out.astype(np.float32)
