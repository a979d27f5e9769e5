from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from shared.demo import centred_grid
from shared.geometry import Geometry, from_array
from shared.manifest import resolve_dataset
from shared.readers import open_layout
from shared.registration import coregister
from tests.factories import IDENTITY, RAS_STORED, write_nnunet

REFERENCE = centred_grid((48, 40, 6), (8.0, 8.0, 20.0), RAS_STORED)


def _physical_points(grid: Geometry) -> np.ndarray:
    """``[z, y, x, 3]`` LPS coordinates of the voxel centres of ``grid``."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.array_shape), indexing="ij")
    index = np.stack([i, j, k], -1) * np.asarray(grid.spacing)
    return index @ np.asarray(grid.direction).reshape(3, 3).T + np.asarray(grid.origin)


def _field(points: np.ndarray) -> np.ndarray:
    """A linear function of position (mm): linear interpolation reproduces it exactly."""
    return (1000 + 2.0 * points[..., 0] - 1.5 * points[..., 1] + 0.5 * points[..., 2]).astype(np.float32)


def _write_channel(folder, grid: Geometry) -> None:
    sitk.WriteImage(from_array(_field(_physical_points(grid)), grid), str(folder / "imagesTr" / "tiny_001_0002.nii.gz"))


def _inside(grid: Geometry, points: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Which points lie within ``margin`` voxels of the voxel-centre hull of ``grid``."""
    inverse = np.linalg.inv(np.asarray(grid.direction).reshape(3, 3))
    index = (points - np.asarray(grid.origin)) @ inverse.T / np.asarray(grid.spacing)
    return np.all((index >= -margin - 1e-6) & (index <= np.asarray(grid.size) - 1 + margin + 1e-6), axis=-1)


@pytest.mark.parametrize(
    "grid",
    [
        # whole-voxel shift of the same grid: 3 voxels in x, -2 in y, 1 slice in z
        Geometry(
            REFERENCE.size, REFERENCE.spacing, tuple(np.add(REFERENCE.origin, (-24.0, 16.0, 20.0))), REFERENCE.direction
        ),
        # another spacing, orientation and extent, shifted by a fraction of a voxel
        Geometry((40, 34, 8), (9.6, 9.4, 16.0), (-190.0, -158.0, -57.0), IDENTITY),
    ],
    ids=["shifted-grid", "other-grid"],
)
def test_a_modality_on_another_grid_lands_on_the_reference_by_physical_position(tmp_path, grid):
    folder = write_nnunet(tmp_path)
    _write_channel(folder, grid)
    dataset = resolve_dataset(str(folder))
    case = coregister(open_layout(dataset).sources("tiny_001"), dataset.manifest, with_label=True)
    points = _physical_points(case.grid)
    assert case.images["T2"].shape == REFERENCE.array_shape
    inside = _inside(grid, points)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(case.images["T2"][inside], _field(points)[inside], rtol=1e-5)
    # Beyond the acquired volume (ITK interpolates up to half a voxel past the edge centres): no signal.
    assert np.all(case.images["T2"][~_inside(grid, points, margin=0.5)] == 0)


def test_label_is_resampled_with_nearest_neighbour_onto_the_canonical_grid(tmp_path):
    folder = write_nnunet(tmp_path)
    dataset = resolve_dataset(str(folder))
    case = coregister(open_layout(dataset).sources("tiny_001"), dataset.manifest, with_label=True)
    stored = sitk.ReadImage(str(folder / "labelsTr" / "tiny_001.nii.gz"))
    assert case.label.dtype == np.uint8
    assert case.original.matches(Geometry.of(stored))
    assert case.grid.direction == IDENTITY
    # RAS-stored -> canonical LPS is a flip of x and y: same voxels, reversed.
    np.testing.assert_array_equal(case.label, sitk.GetArrayFromImage(stored)[:, ::-1, ::-1])
