"""Box refinement: the prediction's boxes prompt the frozen LiteMedSAM decoder, which redraws the class."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stage2_segment.metrics import dice
from stage2_segment.modeling.encoders import FrozenImageEncoder
from stage2_segment.refine import BoxRefiner, largest_piece_per_slice


@pytest.fixture(scope="module")
def disk_slices():
    """Two 256-px slices with a bright disk (the organ, label value 1) and a dim square (value 2), their
    LiteMedSAM embeddings ``[2, 1, 256, 64, 64]`` and the true label map."""
    yy, xx = np.mgrid[:256, :256]
    disk = (yy - 110) ** 2 + (xx - 100) ** 2 < 40**2
    square = (yy >= 170) & (yy < 220) & (xx >= 160) & (xx < 210)
    image = np.full((256, 256), 0.1, np.float32)
    image[disk], image[square] = 0.9, 0.5
    slices = torch.from_numpy(np.stack([image, image]))[:, None]
    embeddings = FrozenImageEncoder()(slices).unsqueeze(1).numpy().astype(np.float16)
    true = np.zeros((2, 256, 256), np.uint8)
    true[:, disk], true[:, square] = 1, 2
    return embeddings, true


def test_a_rough_prediction_is_redrawn_inside_its_box(disk_slices):
    embeddings, true = disk_slices
    yy, xx = np.mgrid[:256, :256]
    rough = np.where(true == 1, 0, true)
    rough[0][(yy - 110) ** 2 + (xx - 100) ** 2 < 32**2] = 1  # slice 0: the disk under-segmented (radius 32 of 40)
    # slice 1: the disk missed entirely -> no box, stays empty
    refiner = BoxRefiner([1, 2])
    refined = refiner(rough, embeddings, [1])
    before, after = dice(rough[0] == 1, true[0] == 1), dice(refined[0] == 1, true[0] == 1)
    assert before < 0.8 and after > 0.85  # measured: 0.78 -> 0.88
    assert not (refined[1] == 1).any()  # no prediction, no box: refinement never invents a target
    # the class not redrawn keeps its voxels (the disk's box mask does not reach the square)
    assert np.array_equal(refined == 2, rough == 2)
    # a redrawn class's mask does not depend on which other classes are redrawn (all boxes compete)
    both = refiner(rough, embeddings, [1, 2])
    assert np.array_equal(both == 1, refined == 1) and dice(both == 2, true == 2) > 0.9
    # nothing to redraw: the map itself; one slice at a time gives the same as batches
    assert refiner(rough, embeddings, []) is rough
    assert np.array_equal(BoxRefiner([1, 2], batch_size=1)(rough, embeddings, [1]), refined)


def test_a_map_that_is_not_on_the_256_px_slices_is_refused(disk_slices):
    embeddings, true = disk_slices
    with pytest.raises(ValueError, match="256-px slices"):
        BoxRefiner([1, 2])(true[:, :128, :128], embeddings, [1])
    with pytest.raises(ValueError, match="one embedding per slice"):
        BoxRefiner([1, 2])(true, embeddings[:1], [1])


def test_largest_piece_per_slice_keeps_each_class_s_largest_2d_piece():
    labels = np.zeros((2, 12, 12), np.uint8)
    labels[0, 1:5, 1:5] = 1  # 16 voxels
    labels[0, 8:10, 8:10] = 1  # an island: 4
    labels[0, 5, 5] = 1  # touches the first piece diagonally: one 8-connected piece with it
    labels[0, 9:12, 0:3] = 2  # another class, one piece
    labels[1, 0:2, 0:2] = 1  # slice 1: two pieces, the larger kept
    labels[1, 6:9, 6:9] = 1
    kept = largest_piece_per_slice(labels)
    expected = labels.copy()
    expected[0, 8:10, 8:10] = 0
    expected[1, 0:2, 0:2] = 0
    assert np.array_equal(kept, expected)
    assert np.array_equal(largest_piece_per_slice(kept), kept)


def test_boxes_around_the_largest_piece_ignore_a_far_island(disk_slices):
    """The largest-component step keeps islands joined to the organ through other slices; on the slice, a far
    island stretches the box over the square between them. A box around the largest piece does not."""
    embeddings, true = disk_slices
    rough = true.copy()
    rough[0, 225:232, 225:232] = 1  # a false island beyond the square
    refiner = BoxRefiner([1, 2])
    whole, piece = refiner(rough, embeddings, [1]), refiner(rough, embeddings, [], [1])
    assert dice(piece[0] == 1, true[0] == 1) > 0.9  # the disk's own box
    assert dice(whole[0] == 1, true[0] == 1) < dice(piece[0] == 1, true[0] == 1) - 0.05
    assert np.array_equal(piece[1], whole[1])  # slice 1 has one piece per class: the same boxes
    assert np.array_equal(piece == 2, rough == 2)  # class 2 is not redrawn
    with pytest.raises(ValueError, match="both kinds of box"):
        refiner(rough, embeddings, [1], [1])
