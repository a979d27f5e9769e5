from __future__ import annotations

import numpy as np
import pytest

from stage2_segment.augment import MAX_ROTATION_DEG, MAX_SHIFT, SCALE, SliceAugmentation, variant


def _blob_case(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A bright blob on the image's left half (the patient's right) and a dim one on the right half."""
    image = np.zeros((2, 3, size, size), np.float32)
    label = np.zeros((3, size, size), np.uint8)
    image[:, :, 20:36, 8:24] = 0.9
    label[:, 20:36, 8:24] = 1
    image[:, :, 24:40, 40:52] = 0.4
    label[:, 24:40, 40:52] = 2
    return image, label


def test_the_identity_transform_changes_nothing():
    image, label = _blob_case()
    same_image, same_label = SliceAugmentation(0.0, 1.0, (0.0, 0.0), (1.0, 1.0)).apply(image, label)
    np.testing.assert_allclose(same_image, image, atol=1e-6)
    np.testing.assert_array_equal(same_label, label)


@pytest.mark.parametrize("copy", range(1, 9))
def test_copies_keep_laterality_label_values_and_intensity_range(copy):
    image, label = _blob_case()
    augmentation = SliceAugmentation.draw("case_7", copy, modalities=2, size=64)
    assert augmentation == SliceAugmentation.draw("case_7", copy, modalities=2, size=64)  # reproducible
    moved_image, moved_label = augmentation.apply(image, label)
    assert set(np.unique(moved_label)) <= {0, 1, 2}
    assert moved_image.min() >= 0 and moved_image.max() <= 1
    for z in range(3):
        left = np.argwhere(moved_label[z] == 1)[:, 1].mean()
        right = np.argwhere(moved_label[z] == 2)[:, 1].mean()
        assert left < 32 < right  # never mirrored: the right kidney stays on the patient's right
    # the label moved with the image: the bright blob's pixels are where label 1 now is
    inside = moved_image[0][moved_label == 1]
    assert inside.mean() > 0.75 ** augmentation.gamma[0]
    assert not np.array_equal(moved_label, label)


def test_copies_span_the_documented_ranges():
    draws = [SliceAugmentation.draw(f"case_{i}", copy, modalities=1, size=256) for i in range(100) for copy in (1, 2)]
    rotations = np.array([d.rotation for d in draws])
    scales = np.array([d.scale for d in draws])
    shifts = np.array([d.shift for d in draws])
    assert MAX_ROTATION_DEG == 15.0 and SCALE == (0.8, 1.25) and MAX_SHIFT == 0.10
    assert np.abs(rotations).max() <= 15.0 and np.abs(rotations).max() > 14.0
    assert scales.min() >= 0.8 and scales.max() <= 1.25 and scales.min() < 0.82 and scales.max() > 1.22
    assert np.abs(shifts).max() <= 25.6 and np.abs(shifts).max() > 24.0  # 10 % of 256 px
    assert (scales > 1.1).sum() > 40 and (scales < 0.9).sum() > 30  # beyond version 1's 0.9-1.1 often


def test_each_epoch_draws_a_version_per_slice_reproducibly():
    draws = [variant(0, 3, i, copies=2) for i in range(600)]
    assert draws == [variant(0, 3, i, copies=2) for i in range(600)]
    assert set(draws) == {0, 1, 2} and 150 < draws.count(0) < 250
    assert draws != [variant(0, 4, i, copies=2) for i in range(600)]
    assert {variant(0, 3, i, copies=0) for i in range(50)} == {0}
