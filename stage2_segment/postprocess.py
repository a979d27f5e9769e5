"""Post-processing as it is applied to a prediction; it is decided on validation (``stage2_segment.finalize``), as
nnU-Net does: each step is applied to a class only where it raises the class's mean validation Dice. Two
steps, in this order:

1. keep only the largest 3-D connected component of the class;
2. redraw the class with the frozen box-prompted LiteMedSAM inside the boxes of its prediction
   (``stage2_segment.refine``; Zeus runs only, as it reads the cached image embeddings), each slice's box around
   all of the class's pieces there or around its largest piece, whichever validation prefers.

A text-prompted decoder sees one slice at a time, so it leaves islands on slices far from the organ (they
dominate HD95). Whether removing them helps is a property of the class (one liver, two kidneys given as two
classes; a tumour may be multifocal), so it is measured, not assumed. The decision is made on the run's
validation cases with its best checkpoint, written as ``postprocessing.json`` in the run folder
(``RunFolder.postprocessing``), and applied by ``Predictor.label_map`` to every prediction after it.
Components are 26-connected in the model's slice grid (connectivity does not depend on the spacing).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage


def keep_largest_component(labels: np.ndarray, value: int) -> np.ndarray:
    """``labels`` (``[Z, S, S]``, or one ``[S, S]`` slice) with every voxel of class ``value`` outside its
    largest connected component set to background (0). Neighbours sharing a face, an edge or a corner connect
    (26-connected in 3-D, 8-connected in 2-D); ties go to the first component in scan order."""
    connectivity = np.ones((3,) * labels.ndim, bool)
    components, count = ndimage.label(labels == value, structure=connectivity)
    if count <= 1:
        return labels
    sizes = np.bincount(components.ravel())[1:]
    out = labels.copy()
    out[(components > 0) & (components != 1 + int(sizes.argmax()))] = 0
    return out


def apply(labels: np.ndarray, values: Iterable[int]) -> np.ndarray:
    for value in values:
        labels = keep_largest_component(labels, value)
    return labels
