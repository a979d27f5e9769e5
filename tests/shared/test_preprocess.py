from __future__ import annotations

import numpy as np
import pytest

from shared.manifest import Normalisation
from shared.preprocess import SliceTransform, normalise


def test_ct_window_maps_hounsfield_units_linearly_to_unit_range():
    hu = np.array([-1000, -160, 40, 240, 3000], np.float32)
    out = normalise(hu, Normalisation("ct_window", window=(-160, 240)))
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])
    assert out.dtype == np.float32


def test_mr_percentiles_ignore_background_and_clip_outliers():
    rng = np.random.default_rng(0)
    volume = np.zeros(10_000, np.float32)
    volume[:5000] = rng.uniform(100, 200, 5000)
    volume[0] = 1e6  # a single hot voxel must not compress the rest
    out = normalise(volume, Normalisation("percentile", percentiles=(0.5, 99.5)))
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.median(out[1:5000]) == pytest.approx(0.5, abs=0.05)
    assert np.all(out[5000:] == 0)


def test_constant_volume_normalises_to_zeros_instead_of_nan():
    out = normalise(np.full((2, 3), 7.0, np.float32), Normalisation("percentile"))
    assert np.all(out == 0)


@pytest.mark.parametrize(
    ("native", "resized"), [((40, 48), (213, 256)), ((512, 512), (256, 256)), ((256, 100), (256, 100))]
)
def test_slice_transform_keeps_aspect_and_pads_bottom_right(native, resized):
    transform = SliceTransform(native=native, size=256)
    assert transform.resized == resized
    volume = np.ones((2, *native), np.float32)
    model = transform.to_model(volume, is_label=False)
    assert model.shape == (2, 256, 256)
    assert np.all(model[:, : resized[0], : resized[1]] > 0.99)
    assert np.all(model[:, resized[0] :, :] == 0) and np.all(model[:, :, resized[1] :] == 0)


def test_downsampling_is_anti_aliased():
    checker = (np.indices((1, 512, 512)).sum(0) % 2).astype(np.float32)  # 1-pixel checkerboard
    model = SliceTransform(native=(512, 512), size=256).to_model(checker, is_label=False)
    assert np.abs(model - 0.5).max() < 0.1  # aliasing would give a solid 0 or 1 pattern


def test_label_round_trip_is_exact_for_integer_factors():
    rng = np.random.default_rng(1)
    label = rng.integers(0, 5, (3, 64, 32)).astype(np.uint8)
    transform = SliceTransform(native=(64, 32), size=128)
    model = transform.to_model(label, is_label=True)
    assert model.dtype == np.uint8 and set(np.unique(model)) <= set(range(5))
    np.testing.assert_array_equal(transform.to_native(model, is_label=True), label)


def test_transform_rejects_a_wrong_slice_shape():
    with pytest.raises(ValueError, match=r"expected \[z, 40, 48\]"):
        SliceTransform(native=(40, 48), size=64).to_model(np.zeros((2, 48, 40)), is_label=False)
