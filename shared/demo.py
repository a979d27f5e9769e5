"""Synthetic abdominal MR phantoms, written in the MSD and the CHAOS layouts.

Each case is a body ellipse holding liver, right and left kidney and spleen (ellipsoids placed like the
real organs in LPS space: the patient's right, i.e. negative x, holds liver and right kidney), with a
per-modality contrast (T1 in-phase, T1 opposed-phase with its dark chemical-shift rim, T2), texture,
Rician-like noise, a smooth bias field, and a small physical misalignment of the T2 acquisition.
The demo therefore runs through the same readers (NIfTI, DICOM, PNG masks) as real data.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image
from scipy.ndimage import binary_erosion, gaussian_filter
from tqdm import tqdm

from shared.atomic import write_json
from shared.geometry import Geometry, from_array

log = logging.getLogger(__name__)

MODALITIES = ("T1_in", "T1_out", "T2")
LABELS = {"background": 0, "liver": 1, "right kidney": 2, "left kidney": 3, "spleen": 4}
CHAOS_GREY = {1: 63, 2: 126, 3: 189, 4: 252}
MSD_NAME = "Task90_ZeusDemo"

# Organ ellipsoids in LPS mm: centre, semi-axes; painted in this order.
_ORGANS = {
    "liver": ((-60.0, -10.0, 10.0), (70.0, 60.0, 55.0)),
    "spleen": ((85.0, 30.0, 20.0), (35.0, 40.0, 40.0)),
    "right kidney": ((-55.0, 60.0, -25.0), (25.0, 30.0, 45.0)),
    "left kidney": ((60.0, 60.0, -20.0), (25.0, 30.0, 45.0)),
}
_BODY_SEMI_AXES = (160.0, 110.0)
# Relative signal of body wall/fat, liver, kidneys, spleen per modality.
_CONTRAST = {
    "T1_in": {"body": 0.55, "liver": 0.75, "right kidney": 0.45, "left kidney": 0.45, "spleen": 0.5},
    "T1_out": {"body": 0.5, "liver": 0.4, "right kidney": 0.55, "left kidney": 0.55, "spleen": 0.6},
    "T2": {"body": 0.35, "liver": 0.25, "right kidney": 0.8, "left kidney": 0.8, "spleen": 0.65},
}


@dataclass(frozen=True)
class DemoConfig:
    cases: int = 6
    size: tuple[int, int] = (128, 128)  # x, y voxels
    slices: int = 16
    spacing: tuple[float, float, float] = (3.0, 3.0, 8.0)
    t2_spacing: tuple[float, float, float] = (3.4, 3.4, 9.0)
    seed: int = 0


@dataclass(frozen=True)
class Phantom:
    """One synthetic patient: organ jitter and the T2 misalignment (mm), all drawn from the seed."""

    case_id: str
    scale: float
    offset: tuple[float, float, float]
    t2_shift: tuple[float, float, float]
    seed: int

    @classmethod
    def draw(cls, index: int, seed: int) -> Phantom:
        rng = np.random.default_rng([seed, index])
        return cls(
            case_id=f"{index + 1:03d}",
            scale=float(rng.uniform(0.9, 1.1)),
            offset=tuple(float(v) for v in rng.uniform(-8, 8, 3)),
            t2_shift=tuple(float(v) for v in rng.uniform(-4, 4, 3)),
            seed=int(rng.integers(2**31)),
        )

    def label(self, grid: Geometry, shift: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
        """uint8 ``[z, y, x]`` organ labels on ``grid``; the anatomy displaced by ``shift`` mm."""
        x, y, z = _physical_coordinates(grid, np.add(self.offset, shift))
        label = np.zeros(grid.array_shape, np.uint8)
        for name, (centre, semi) in _ORGANS.items():
            axes = zip((x, y, z), centre, semi, strict=True)
            inside = sum(((c - m) / (s * self.scale)) ** 2 for c, m, s in axes) <= 1
            label[inside] = LABELS[name]
        return label

    def body(self, grid: Geometry, shift: tuple[float, float, float]) -> np.ndarray:
        x, y, _ = _physical_coordinates(grid, np.add(self.offset, shift))
        return (x / _BODY_SEMI_AXES[0]) ** 2 + (y / _BODY_SEMI_AXES[1]) ** 2 <= 1

    def image(self, modality: str, grid: Geometry, shift: tuple[float, float, float]) -> np.ndarray:
        """int16 ``[z, y, x]`` MR-like signal (0..~1500) of ``modality`` on ``grid``."""
        rng = np.random.default_rng([self.seed, MODALITIES.index(modality)])
        label = self.label(grid, shift)
        contrast = _CONTRAST[modality]
        signal = np.where(self.body(grid, shift), contrast["body"], 0.0)
        for name, value in LABELS.items():
            if value:
                signal = np.where(label == value, contrast[name], signal)
        if modality == "T1_out":  # chemical-shift "India ink" rim at fat-water interfaces
            signal[(label > 0) & ~binary_erosion(label > 0, iterations=1)] *= 0.3
        texture = gaussian_filter(rng.standard_normal(signal.shape), sigma=(0.5, 2, 2))
        bias = _bias_field(grid, rng)
        signal = (signal * (1 + 0.15 * texture / (texture.std() + 1e-6))) * bias
        noisy = np.hypot(signal + rng.normal(0, 0.03, signal.shape), rng.normal(0, 0.03, signal.shape))
        return np.clip(noisy * 1000, 0, 32000).astype(np.int16)


def _physical_coordinates(grid: Geometry, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS coordinates (mm) of every voxel centre of ``grid`` minus ``offset``, each ``[z, y, x]``."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.array_shape), indexing="ij")
    index = np.stack([i, j, k], -1) * np.asarray(grid.spacing)
    points = index @ np.asarray(grid.direction).reshape(3, 3).T + np.asarray(grid.origin) - offset
    return points[..., 0], points[..., 1], points[..., 2]


def _bias_field(grid: Geometry, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field, about 0.8 to 1.2 across the field of view."""
    _z, y, x = (np.linspace(-1, 1, n) for n in grid.array_shape)
    a, b, c = rng.uniform(-0.15, 0.15, 3)
    return 1 + a * x[None, None, :] + b * y[None, :, None] + c * (x[None, None, :] * y[None, :, None])


def centred_grid(
    size: tuple[int, int, int], spacing: tuple[float, float, float], direction: tuple[float, ...]
) -> Geometry:
    """A grid of ``size`` (x, y, z) voxels centred on the physical origin."""
    half = (np.asarray(size) - 1) / 2 * np.asarray(spacing)
    origin = -np.asarray(direction).reshape(3, 3) @ half
    return Geometry(tuple(size), tuple(spacing), tuple(float(o) for o in origin), tuple(direction))


_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
_RAS_STORED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # how NIfTI converted from RAS looks in LPS


def write_demo(
    out: Path, config: DemoConfig = DemoConfig(), progress: bool = True, overwrite: bool = False
) -> dict[str, Path]:
    """Write the demo dataset under ``out`` in both layouts; returns the two dataset roots.

    Skipped when ``out`` already holds the demo of the same configuration (rewritten files would invalidate
    every cache built from them), unless ``overwrite``."""
    phantoms = [Phantom.draw(i, config.seed) for i in range(config.cases)]
    roots = {"msd": out / MSD_NAME, "chaos": out / "CHAOS"}
    stamp = out / "demo_config.json"
    wanted = json.loads(json.dumps(asdict(config)))  # tuples as JSON lists, as stored
    if not overwrite and stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == wanted:
        log.info("demo data of this configuration already in %s", out)
        return roots
    stamp.unlink(missing_ok=True)
    for phantom in tqdm(phantoms, desc="demo data", unit="case", disable=not progress):
        write_msd_case(roots["msd"], phantom, config)
        write_chaos_case(roots["chaos"], phantom, config)
    write_json(roots["msd"] / "dataset.json", msd_dataset_json(phantoms))
    write_json(stamp, asdict(config))  # last: marks a complete demo
    return roots


def msd_dataset_json(phantoms: list[Phantom]) -> dict:
    return {
        "name": "ZeusDemo",
        "description": "Synthetic abdominal MR phantoms (Zeus demo)",
        "tensorImageSize": "4D",
        "modality": {str(i): m for i, m in enumerate(MODALITIES)},
        "labels": {str(v): k for k, v in LABELS.items()},
        "numTraining": len(phantoms),
        "numTest": 0,
        "training": [
            {"image": f"./imagesTr/demo_{p.case_id}.nii.gz", "label": f"./labelsTr/demo_{p.case_id}.nii.gz"}
            for p in phantoms
        ],
        "test": [],
    }


def write_msd_case(root: Path, phantom: Phantom, config: DemoConfig) -> None:
    """One MSD case: 4-D NIfTI of all modalities on one grid (T2 anatomy shifted) and its label."""
    grid = centred_grid((*config.size, config.slices), config.spacing, _RAS_STORED)
    channels = [
        from_array(phantom.image(m, grid, phantom.t2_shift if m == "T2" else (0, 0, 0)), grid) for m in MODALITIES
    ]
    name = f"demo_{phantom.case_id}.nii.gz"
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.JoinSeries(channels), str(root / "imagesTr" / name), useCompression=True)
    sitk.WriteImage(from_array(phantom.label(grid), grid), str(root / "labelsTr" / name), useCompression=True)


def write_chaos_case(root: Path, phantom: Phantom, config: DemoConfig) -> None:
    """One CHAOS MR patient: T1-DUAL in/opposed-phase series sharing a mask set, T2-SPIR on its own grid."""
    patient = root / "Train_Sets" / "MR" / str(int(phantom.case_id))
    t1 = centred_grid((*config.size, config.slices), config.spacing, _IDENTITY)
    extent = np.multiply((*config.size, config.slices), config.spacing)
    t2_size = tuple(int(n) for n in np.round(extent / config.t2_spacing))
    t2 = centred_grid(t2_size, config.t2_spacing, _IDENTITY)
    uid = _uid_root(phantom)
    n1, n2 = t1.size[2], t2.size[2]
    # Like CHAOS: in/opposed-phase files interleave their numbers; masks carry the in-phase names.
    in_names = [f"IMG-0004-{2 * i + 2:05d}" for i in range(n1)]
    out_names = [f"IMG-0004-{2 * i + 1:05d}" for i in range(n1)]
    t2_names = [f"IMG-0002-{i + 1:05d}" for i in range(n2)]
    series = (
        ("T1_in", t1, (0.0, 0.0, 0.0), "T1DUAL/DICOM_anon/InPhase", in_names),
        ("T1_out", t1, (0.0, 0.0, 0.0), "T1DUAL/DICOM_anon/OutPhase", out_names),
        ("T2", t2, phantom.t2_shift, "T2SPIR/DICOM_anon", t2_names),
    )
    for k, (modality, grid, shift, folder, names) in enumerate(series, start=1):
        image = from_array(phantom.image(modality, grid, shift), grid)
        write_dicom_series(image, patient / folder, names, modality="MR", series_uid=f"{uid}.{k}", study_uid=f"{uid}.0")
    write_png_masks(phantom.label(t1), patient / "T1DUAL/Ground", in_names, CHAOS_GREY)
    write_png_masks(phantom.label(t2, phantom.t2_shift), patient / "T2SPIR/Ground", t2_names, CHAOS_GREY)


def _uid_root(phantom: Phantom) -> str:
    digits = int(hashlib.sha256(f"zeus-demo-{phantom.seed}".encode()).hexdigest()[:12], 16)
    return f"1.2.826.0.1.3680043.9.7133.{digits}"


def write_dicom_series(
    image: sitk.Image, folder: Path, names: list[str], *, modality: str, series_uid: str, study_uid: str
) -> None:
    """Write ``image`` as one DICOM file per slice. ``names[k]`` is the file stem of the slice at *descending*
    position k from the top, so file-name order runs opposite to position order, as in many CHAOS series."""
    if len(names) != image.GetSize()[2]:
        raise ValueError(f"{len(names)} names for {image.GetSize()[2]} slices")
    folder.mkdir(parents=True, exist_ok=True)
    d = image.GetDirection()
    orientation = "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    depth = image.GetSize()[2]
    for k, name in enumerate(names):
        z = depth - 1 - k
        slice_ = image[:, :, z]
        position = image.TransformIndexToPhysicalPoint((0, 0, z))
        tags = {
            "0008|0060": modality,
            "0008|0008": "ORIGINAL\\PRIMARY",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4" if modality == "MR" else "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": study_uid,
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": orientation,
            "0018|0050": f"{image.GetSpacing()[2]:.6f}",
            "0010|0020": series_uid.rsplit(".", 2)[-2],
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{name}.dcm"))
        writer.Execute(slice_)


def write_png_masks(label: np.ndarray, folder: Path, names: list[str], grey: dict[int, int]) -> None:
    """Write ``[z, y, x]`` labels as 8-bit PNGs paired with ``write_dicom_series``'s ``names`` (same order)."""
    folder.mkdir(parents=True, exist_ok=True)
    lut = np.zeros(256, np.uint8)
    for value, level in grey.items():
        lut[value] = level
    depth = label.shape[0]
    for k, name in enumerate(names):
        Image.fromarray(lut[label[depth - 1 - k]]).save(folder / f"{name}.png")
