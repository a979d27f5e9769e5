from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from stage2_segment.metrics import extent_diagonal, hd95, score_masks


def _box(shape, lo, hi) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return mask


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a background face neighbour (outside the array counts as background)."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for shift in (1, -1):
            inner &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(mask & ~inner)


def _brute_force_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    pa, pb = _boundary(a) * np.asarray(spacing), _boundary(b) * np.asarray(spacing)
    d = cdist(pa, pb)
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


def test_dice_and_iou_of_overlapping_boxes():
    a = _box((10, 20, 20), (2, 5, 5), (6, 10, 10))  # 4 x 5 x 5 = 100 voxels
    b = _box((10, 20, 20), (3, 5, 5), (7, 10, 10))  # shifted by one slice: 75 shared
    scores = score_masks(a, b, (3.0, 1.0, 1.0))
    assert scores.dice == pytest.approx(2 * 75 / 200)
    assert scores.iou == pytest.approx(75 / 125)
    assert (scores.predicted_voxels, scores.true_voxels) == (100, 100)


def test_hd95_is_in_millimetres_and_follows_the_anisotropic_spacing():
    a = _box((10, 20, 20), (2, 5, 5), (6, 10, 10))
    b = _box((10, 20, 20), (3, 5, 5), (7, 10, 10))
    assert hd95(a, b, (3.0, 1.0, 1.0)) == pytest.approx(3.0)  # one slice of 3 mm
    assert hd95(a, b, (5.0, 1.0, 1.0)) == pytest.approx(5.0)
    c = _box((10, 20, 20), (2, 7, 5), (6, 12, 10))  # shifted two rows in-plane
    assert hd95(a, c, (5.0, 0.5, 0.5)) == pytest.approx(1.0)


def test_hd95_matches_a_brute_force_reference_and_is_symmetric():
    rng = np.random.default_rng(0)
    a = _box((12, 24, 24), (2, 4, 4), (9, 15, 18))
    b = a.copy()
    b[rng.random(b.shape) < 0.05] = True  # scattered false positives far from the box
    b[5:7, 10:12, 10:12] = False
    spacing = (2.5, 0.8, 0.8)
    expected = _brute_force_hd95(a, b, spacing)
    assert hd95(a, b, spacing) == pytest.approx(expected, rel=1e-5)
    assert hd95(b, a, spacing) == pytest.approx(expected, rel=1e-5)


def test_empty_masks_follow_the_documented_rules():
    empty, box = np.zeros((4, 8, 8), bool), _box((4, 8, 8), (1, 1, 1), (3, 4, 4))
    both = score_masks(empty, empty, (2.0, 1.0, 1.0))
    assert math.isnan(both.dice) and math.isnan(both.iou) and math.isnan(both.hd95)
    worst = extent_diagonal((4, 8, 8), (2.0, 1.0, 1.0))
    assert worst == pytest.approx(math.sqrt(8**2 + 8**2 + 8**2))
    for pred, true in ((empty, box), (box, empty)):
        one = score_masks(pred, true, (2.0, 1.0, 1.0))
        assert (one.dice, one.iou, one.hd95) == (0.0, 0.0, pytest.approx(worst))


def test_two_dimensional_slices_use_in_plane_spacing():
    a, b = _box((1, 10, 10), (0, 2, 2), (1, 5, 5))[0], _box((1, 10, 10), (0, 2, 3), (1, 5, 6))[0]
    scores = score_masks(a, b, (0.7, 0.7))
    assert scores.dice == pytest.approx(2 * 6 / 18)
    assert scores.hd95 == pytest.approx(0.7)
