"""Prediction: a trained run segments prepared cases and writes label maps in the scanner's geometry.

``Predictor.from_run`` rebuilds the model from the run folder (``RunInfo`` + a checkpoint); ensembles are built
on it in ``stage2_segment.ensemble``, and the post-processing it applies is decided in ``stage2_segment.finalize``.
For a case it returns softmax probabilities on the model slices, float32 ``[T + 1, Z, S, S]`` (channel 0
background, t + 1 the t-th target of the manifest), and writes them back on the reference modality's original grid:

- ``<case>.nii.gz``: uint8 label map with the manifest's label values (0 background), same size, spacing,
  origin and direction as the reference image on disk;
- ``<case>_prob_<target>.nii.gz`` (optional): float32 probability of each target on the same grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.data import DataLoader

from shared.atomic import write_image
from shared.cases import CaseCache, CaseMeta
from shared.errors import ZeusError
from shared.manifest import Dataset
from shared.workspace import slug
from stage2_segment import postprocess
from stage2_segment.config import BOX_REFERENCE, TrainConfig
from stage2_segment.data import SliceDataset, forward_batch
from stage2_segment.features import FeatureCache, feature_cache
from stage2_segment.instructions import InstructionTable, instruction_table
from stage2_segment.modeling.build import build_model
from stage2_segment.modeling.segmenter import SegmenterConfig
from stage2_segment.refine import BoxRefiner
from stage2_segment.runs import (
    BEST,
    Postprocessing,
    RunFolder,
    RunInfo,
    load_checkpoint,
    mixed_precision,
    pick_device,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Segmentation:
    """One case on the model slices: softmax ``probabilities`` float32 ``[T + 1, Z, S, S]`` (channel 0 the
    background) and ``labels``, the post-processed uint8 ``[Z, S, S]`` map of manifest label values."""

    probabilities: np.ndarray
    labels: np.ndarray


class Predictor:
    def __init__(
        self,
        run: RunFolder,
        info: RunInfo,
        dataset: Dataset,
        config: TrainConfig,
        model: torch.nn.Module,
        device: torch.device,
    ):
        """``info``: the run's ``config.json``; ``config``: the training configuration its checkpoint holds."""
        self.run, self.info, self.dataset, self.config = run, info, dataset, config
        self.model, self.device = model, device
        self.label_values = np.asarray([0, *dataset.manifest.targets.values()], np.uint8)  # class index -> value
        decision = run.read_postprocessing() or Postprocessing(largest_component=[])
        unknown = sorted(decision.classes - set(dataset.manifest.targets))
        if unknown:
            raise ZeusError(f"{run.postprocessing_json} names classes the run does not have: {unknown}")
        # label values of the classes each post-processing step applies to (decided on validation: postprocess.py)
        self.largest_component = [dataset.manifest.targets[c] for c in decision.largest_component]
        self.box_refine = [dataset.manifest.targets[c] for c in decision.box_refine]
        self.box_refine_piece = [dataset.manifest.targets[c] for c in decision.box_refine_piece]

    @cached_property
    def _refiner(self) -> BoxRefiner | None:
        """Loaded on first use: an ensemble applies its own decision, so its members never load theirs."""
        return self.box_refiner() if self.box_refine or self.box_refine_piece else None

    @classmethod
    def from_run(cls, run_dir: Path, *, root: Path | None = None, checkpoint: str = BEST) -> Predictor:
        """The predictor of a trained run (an ensemble's: ``stage2_segment.ensemble.load_predictor``)."""
        run = RunFolder(run_dir)
        info = run.read_info() if run.is_run() else None
        if info is not None and info.ensemble:
            raise ZeusError(f"{run_dir} is an ensemble: load it with stage2_segment.ensemble.load_predictor")
        weights = run.checkpoint(checkpoint)
        if info is None or not weights.is_file():
            raise ZeusError(
                f"{run_dir} is not a finished run: expected {run.config_json.name} and {weights.relative_to(run_dir)}"
            )
        device = pick_device()
        state = load_checkpoint(weights, device)
        config = TrainConfig.from_json(state["config"])
        dataset = info.open_dataset(root)
        manifest = dataset.manifest
        # The checkpoint holds every weight (positional encodings included): no pretrained load before it.
        segmenter = SegmenterConfig(**state["segmenter"]) if state["segmenter"] else None
        model = build_model(config, manifest, segmenter, pretrained=False)
        model.load_state_dict(state["model"], strict=True)
        log.info("loaded %s (epoch %d, best validation Dice %.4f)", weights, state["epoch"], state["best_dice"])
        return cls(run, info, dataset, config, model.to(device).eval(), device)

    @property
    def needs_ground_truth(self) -> bool:
        """The box-prompted reference takes its boxes from the ground truth: it cannot segment new scans."""
        return self.config.model == BOX_REFERENCE

    def features(self, cases: CaseCache) -> FeatureCache | None:
        return feature_cache(self.config, cases, self.device) if self.config.uses_features else None

    def instructions(self, dataset: Dataset) -> InstructionTable | None:
        return instruction_table(dataset.manifest, self.config)

    @torch.no_grad()
    def predict_case(
        self,
        case_id: str,
        cases: CaseCache,
        features: FeatureCache | None,
        instructions: InstructionTable | None,
        batch_size: int = 4,
    ) -> np.ndarray:
        """Softmax probabilities, float32 ``[T + 1, Z, S, S]``, of one prepared case."""
        if features is not None:
            features.ensure([case_id], progress=False)
        slices = SliceDataset(
            [case_id],
            cases,
            features,
            instructions,
            with_labels=self.needs_ground_truth,
            context=self.config.slice_context,
        )
        autocast = mixed_precision(self.device, self.config.precision)
        out = []
        for batch in DataLoader(slices, batch_size=batch_size, shuffle=False):
            with autocast:
                logits = forward_batch(self.model, batch, self.device)
            out.append(torch.softmax(logits.float(), dim=1).cpu())
        return torch.cat(out).permute(1, 0, 2, 3).numpy()

    def box_refiner(self) -> BoxRefiner | None:
        """The box-prompted decoder that redraws this run's predictions (``stage2_segment.refine``); None for
        the U-Net (no image embeddings) and the box-prompted reference (its boxes are the ground truth's)."""
        if self.config.model != "zeus":
            return None
        manifest = self.dataset.manifest
        channel = 0 if self.config.fusion == "early" else manifest.modality_names.index(manifest.reference_modality)
        return BoxRefiner(list(manifest.targets.values()), channel=channel, device=self.device)

    def segment_case(
        self,
        case_id: str,
        cases: CaseCache,
        features: FeatureCache | None,
        instructions: InstructionTable | None,
    ) -> Segmentation:
        """The probabilities and the post-processed label map of one prepared case."""
        probabilities = self.predict_case(case_id, cases, features, instructions)
        embeddings = features.load(case_id) if features is not None else None
        return Segmentation(probabilities, self.label_map(probabilities, embeddings))

    def raw_label_map(self, probabilities: np.ndarray) -> np.ndarray:
        """uint8 ``[Z, S, S]`` manifest label values of the most probable class."""
        return self.label_values[probabilities.argmax(axis=0)]

    def label_map(self, probabilities: np.ndarray, embeddings: np.ndarray | None = None) -> np.ndarray:
        """The raw label map after the run's post-processing: the largest component of the classes chosen on
        validation, then the box refinement of those chosen for it, which reads the case's cached image
        embeddings ``[Z, C, 256, 64, 64]``. A run without a decision gets the raw map."""
        labels = postprocess.apply(self.raw_label_map(probabilities), self.largest_component)
        if self._refiner is None:
            return labels
        if embeddings is None:
            redrawn = self.box_refine + self.box_refine_piece
            raise ValueError(f"{self.run.path} redraws {redrawn} with boxes: pass the case's image embeddings")
        return self._refiner(labels, embeddings, self.box_refine, self.box_refine_piece)

    def write(
        self, meta: CaseMeta, segmentation: Segmentation, out_dir: Path, *, probability_maps: bool = False
    ) -> list[Path]:
        """The label map (and optionally the raw per-target probabilities) as NIfTI on the original reference
        grid."""
        label_path = out_dir / f"{meta.case_id}.nii.gz"
        write_image(label_path, meta.restore(segmentation.labels, is_label=True))
        written = [label_path]
        if probability_maps:
            for index, target in enumerate(self.dataset.manifest.targets, start=1):
                probabilities = segmentation.probabilities[index]
                image = sitk.Cast(meta.restore(probabilities, is_label=False), sitk.sitkFloat32)
                path = out_dir / f"{meta.case_id}_prob_{slug(target)}.nii.gz"
                write_image(path, image)
                written.append(path)
        return written
