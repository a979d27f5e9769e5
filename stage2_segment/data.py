"""Training samples: one (case, slice) with its cached image embeddings, instruction embeddings and labels.

What crosses into the model (per sample):

- ``inputs``: float32 ``[C', 256, 64, 64]`` image embeddings, C' = modalities (hybrid, late) or 1 (early);
  or, without a feature cache (the U-Net baseline), the slice itself: float32 ``[M, S, S]`` in [0, 1];
- ``text``: float32 ``[M + 1, T, D]``: instruction embeddings per modality (rows 0..M-1, manifest order) and the
  union row (M), per target (manifest order); absent for ``--text none``;
- ``label``: int64 ``[S, S]`` class indices, 0 = background, t + 1 = the t-th target of the manifest (absent
  with ``with_labels=False``: new scans to predict);
- ``index``: int64 scalar, the sample's position in ``SliceDataset.index`` (``case_of`` names its case);
- ``context`` (with ``context=k`` > 0, for 2.5-D models): float32 ``[2k, C', 256, 64, 64]``, the image embeddings
  of slices z-k..z-1 and z+1..z+k of the same case version, in that order; beyond the volume's first or last
  slice the edge slice repeats.

Slices where a target is absent are kept: they teach empty masks. With ``copies`` augmented copies per case
(``stage2_segment.augment``), ``set_epoch`` picks for every sample which version it reads this epoch.

``DeviceSlices`` holds a whole ``SliceDataset`` on a device (embeddings stay float16, labels uint8) and cuts
batches there by index: on a GPU the per-sample loader, not the model, would set the pace. Its batches equal
the loader's, value for value.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

from shared.cases import CaseCache
from shared.errors import ZeusError
from shared.manifest import Manifest
from stage2_segment.augment import variant
from stage2_segment.features import FeatureCache
from stage2_segment.instructions import InstructionTable


def class_lookup(manifest: Manifest) -> np.ndarray:
    """int64[256]: label value -> class index (0 background, t + 1 for the t-th target)."""
    lut = np.zeros(256, np.int64)
    for index, value in enumerate(manifest.targets.values()):
        lut[value] = index + 1
    return lut


def forward_batch(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """A model's logits ``Bx(T+1)xSxS`` for a batch of samples: text-prompted models read ``text``, the
    box-prompted reference reads boxes of the ground truth (``label``)."""
    from stage2_segment.modeling.box_reference import BoxPromptedSAM, boxes_from_labels

    inputs = batch["inputs"].to(device)
    if isinstance(model, BoxPromptedSAM):
        return model(inputs, boxes_from_labels(batch["label"], model.num_targets))
    text, context = batch.get("text"), batch.get("context")
    if context is None:  # the U-Net and 2-D Zeus models take no context argument
        return model(inputs, None if text is None else text.to(device))
    return model(inputs, None if text is None else text.to(device), context.to(device))


class SliceDataset(Dataset):
    def __init__(
        self,
        case_ids: list[str],
        cases: CaseCache,
        features: FeatureCache | None,
        instructions: InstructionTable | None,
        *,
        with_labels: bool = True,
        copies: int = 0,
        seed: int = 0,
        context: int = 0,
    ):
        if not case_ids:
            raise ZeusError("no cases to train or evaluate on: check the splits")
        if (copies or context) and features is None:
            raise ZeusError("augmented copies and slice context are cached image embeddings: the U-Net has none")
        self.cases, self.features, self.instructions, self.with_labels = cases, features, instructions, with_labels
        self.copies, self.seed, self.epoch, self.context = copies, seed, 0, context
        self.lut = torch.from_numpy(class_lookup(cases.dataset.manifest))
        self.index = [(c, z) for c in case_ids for z in range(cases.meta(c).grid.array_shape[0])]

    def set_epoch(self, epoch: int) -> None:
        """Samples of this epoch read the version ``augment.variant`` draws for (seed, epoch, sample)."""
        self.epoch = epoch

    def variant(self, i: int) -> int:
        return variant(self.seed, self.epoch, i, self.copies)

    def __len__(self) -> int:
        return len(self.index)

    def case_of(self, i: int) -> str:
        return self.index[i][0]

    def neighbours(self, z: int, depth: int) -> list[int]:
        """The context slices of slice ``z`` in a volume of ``depth`` slices (``context`` on either side, the
        edge slice repeated beyond the volume)."""
        k = self.context
        return [min(max(z + d, 0), depth - 1) for d in (*range(-k, 0), *range(1, k + 1))]

    @lru_cache(maxsize=8)  # noqa: B019 - a few whole cases; the dataset lives as long as its loader
    def _label(self, case_id: str, copy: int = 0) -> torch.Tensor:
        values = self.cases.label(case_id) if copy == 0 else self.features.load_label(case_id, copy)
        return self.lut[torch.from_numpy(values.astype(np.int64))]

    @lru_cache(maxsize=8)  # noqa: B019 - as above
    def _image(self, case_id: str) -> np.ndarray:
        return self.cases.load(case_id, with_label=False).image

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        case_id, z = self.index[i]
        copy = self.variant(i)
        if self.features is not None:
            volume = self.features.load(case_id, copy)
            inputs = np.asarray(volume[z], dtype=np.float32)
        else:
            inputs = self._image(case_id)[:, z]
        sample = {"inputs": torch.from_numpy(np.ascontiguousarray(inputs)), "index": torch.tensor(i)}
        if self.context:
            rows = self.neighbours(z, len(volume))
            sample["context"] = torch.from_numpy(np.asarray(volume[rows], dtype=np.float32))
        if self.with_labels:
            sample["label"] = self._label(case_id, copy)[z]
        if self.instructions is not None:
            sample["text"] = torch.from_numpy(self.instructions.for_case(case_id)[z])
        return sample


class DeviceSlices:
    """Every sample of ``dataset`` in device tensors, row i = ``dataset[i]``; ``batch`` gives what the loader
    would collate for those indices."""

    def __init__(self, dataset: SliceDataset, device: torch.device):
        self.dataset = dataset
        case_ids = list(dict.fromkeys(case_id for case_id, _ in dataset.index))
        copies = range(dataset.copies + 1)
        # [copies + 1, N, ...]: every version of every sample
        self.inputs = torch.stack(
            [
                torch.cat([torch.from_numpy(np.ascontiguousarray(self._inputs(dataset, c, k))) for c in case_ids])
                for k in copies
            ]
        ).to(device)
        if self.inputs.shape[1] != len(dataset):
            raise ZeusError(f"{self.inputs.shape[1]} cached slices for {len(dataset)} samples: rerun `zeus train`")
        # [N, 2k]: the rows of each sample's context slices (the samples of a case are consecutive rows)
        self.context = None
        if dataset.context:
            depth = {c: dataset.cases.meta(c).grid.array_shape[0] for c in case_ids}
            first = dict(zip(case_ids, np.cumsum([0, *depth.values()])[:-1].tolist(), strict=True))
            rows = [[first[c] + n for n in dataset.neighbours(z, depth[c])] for c, z in dataset.index]
            self.context = torch.tensor(rows, dtype=torch.long, device=device)
        self.label = (
            torch.stack([torch.cat([dataset._label(c, k).to(torch.uint8) for c in case_ids]) for k in copies]).to(
                device
            )
            if dataset.with_labels
            else None
        )
        self.text = (
            torch.cat([torch.from_numpy(dataset.instructions.for_case(c)) for c in case_ids]).to(device)
            if dataset.instructions is not None
            else None
        )

    @staticmethod
    def _inputs(dataset: SliceDataset, case_id: str, copy: int) -> np.ndarray:
        if dataset.features is not None:
            return np.asarray(dataset.features.load(case_id, copy))  # Z x C' x 256 x 64 x 64, float16
        return dataset._image(case_id).transpose(1, 0, 2, 3)  # Z x M x S x S

    def __len__(self) -> int:
        return self.inputs.shape[1]

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """The samples ``indices``, each in the version its dataset reads this epoch."""
        copies = torch.tensor([self.dataset.variant(int(i)) for i in indices]).to(self.inputs.device)
        indices = indices.to(self.inputs.device)
        batch = {"inputs": self.inputs[copies, indices].float(), "index": indices}
        if self.context is not None:
            batch["context"] = self.inputs[copies[:, None], self.context[indices]].float()
        if self.label is not None:
            batch["label"] = self.label[copies, indices].long()
        if self.text is not None:
            batch["text"] = self.text[indices]
        return batch
