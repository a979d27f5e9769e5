"""Box refinement: the text-prompted prediction proposes, the frozen box-prompted LiteMedSAM redraws.

The text-prompted decoder finds *which* region is the target; LiteMedSAM's own decoder, prompted with a box,
draws organ boundaries better than a decoder trained on a handful of patients (on the dev data it reaches
0.94-0.95 Dice from ground-truth boxes). So for a class chosen on validation (``stage2_segment.postprocess``),
each slice's predicted mask of that class gives a box (its extent + ``BOX_MARGIN`` px, as the ground-truth
reference draws them) and the pretrained box decoder's mask inside the prompt replaces the prediction. The
boxes of every class are decoded, so redrawn masks compete with the other classes' box masks as in the
reference.

Nothing here reads the ground truth: the boxes come from the model's own prediction, so a slice where the
text-prompted model missed the target stays empty, and one where it saw a false target keeps a false box.

It reads the cached image embeddings of the case (the reference modality's, or the early-fusion embedding)
and needs no training; the decoder and prompt encoder keep LiteMedSAM's weights.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import torch

from stage2_segment.modeling.box_reference import BOX_MARGIN, BoxPromptedSAM, boxes_from_labels
from stage2_segment.modeling.decoder import INPUT_SIZE
from stage2_segment.postprocess import keep_largest_component


class BoxRefiner:
    """``label_values``: the manifest's target label values, in manifest order; ``channel``: which embedding
    channel to prompt (the reference modality; 0 for early fusion, whose embedding has one)."""

    def __init__(
        self,
        label_values: Sequence[int],
        *,
        channel: int = 0,
        margin: int = BOX_MARGIN,
        device: torch.device | str = "cpu",
        batch_size: int = 8,
    ):
        self.label_values = [int(v) for v in label_values]
        self.values = np.asarray([0, *self.label_values], np.uint8)  # class index -> label value
        self.classes = np.zeros(256, np.int64)  # label value -> class index (0 background, t + 1)
        self.classes[self.label_values] = np.arange(1, len(self.label_values) + 1)
        self.margin, self.device, self.batch_size = margin, torch.device(device), batch_size
        self.model = BoxPromptedSAM(len(self.label_values), channel).to(self.device).eval()

    @torch.no_grad()
    def __call__(
        self,
        labels: np.ndarray,
        embeddings: np.ndarray,
        refine: Collection[int],
        largest_piece: Collection[int] = (),
    ) -> np.ndarray:
        """``labels``: uint8 ``[Z, S, S]`` label values on the model slices; ``embeddings``: ``[Z, C, 256, 64,
        64]`` (the feature cache's array); ``refine``: the label values to redraw from boxes around all their
        pieces on a slice, ``largest_piece``: those to redraw from boxes around their largest piece.

        Every class with a prediction on a slice is decoded from its box, and the box masks compete as in the
        reference (the most confident wins, background where none is confident): the box-prompted map, one for
        each kind of box in use. Each redrawn class then takes its voxels from its map, the others keep their
        predicted voxels except where a redrawn class now holds them (a voxel claimed in both maps goes to the
        largest-piece one). So a redrawn class's mask does not depend on which other classes are redrawn, and a
        per-class decision on validation measures what prediction applies."""
        whole, piece = [int(v) for v in refine], [int(v) for v in largest_piece]
        if overlap := set(whole) & set(piece):
            raise ValueError(f"label values {sorted(overlap)} are asked for with both kinds of box")
        if not (whole or piece):
            return labels
        if labels.shape[1:] != INPUT_SIZE or len(embeddings) != len(labels):
            raise ValueError(
                f"box refinement needs {INPUT_SIZE[0]}-px slices and one embedding per slice: got labels "
                f"{labels.shape}, embeddings {tuple(embeddings.shape)}"
            )
        out = np.where(np.isin(labels, whole + piece), 0, labels).astype(labels.dtype)
        for values, around_largest_piece in ((whole, False), (piece, True)):
            if values:
                prompted = self.box_prompted(labels, embeddings, largest_piece=around_largest_piece)
                redrawn = np.isin(prompted, values)
                out[redrawn] = prompted[redrawn]
        return out

    def box_prompted(self, labels: np.ndarray, embeddings: np.ndarray, *, largest_piece: bool = False) -> np.ndarray:
        """The label map the box-prompted decoder draws from the boxes of every class's prediction (around its
        largest piece on each slice with ``largest_piece``)."""
        source = largest_piece_per_slice(labels) if largest_piece else labels
        boxes = boxes_from_labels(torch.from_numpy(self.classes[source]), len(self.label_values), self.margin)
        prompted = np.zeros_like(labels)
        for start in range(0, len(labels), self.batch_size):
            stop = start + self.batch_size
            if torch.isnan(boxes[start:stop, :, 0]).all():
                continue
            batch = torch.from_numpy(np.asarray(embeddings[start:stop], np.float32)).to(self.device)
            logits = self.model(batch, boxes[start:stop]).cpu().numpy()  # B x (T + 1) x S x S, background 0
            prompted[start:stop] = self.values[logits.argmax(axis=1)]
        return prompted


def largest_piece_per_slice(labels: np.ndarray) -> np.ndarray:
    """``labels`` (``[Z, S, S]`` label values) with each class keeping, on every slice, only its largest 2-D
    connected piece (``postprocess.keep_largest_component`` of the slice: 8-connected)."""
    out = labels.copy()
    for z in range(len(out)):
        for value in np.unique(out[z]):
            if value:
                out[z] = keep_largest_component(out[z], int(value))
    return out
