"""The preprocessed-case cache: each case read, co-registered and normalised once.

Files, under ``$ZEUS_HOME/preprocessed/<dataset>/<size>px/<case>/``:

- ``image.npz``  ``image``: float16 ``[C, Z, S, S]`` in [0, 1], channels in manifest order (model slices)
- ``meta.json``  modalities, grids (canonical and original), slice transform, source signature;
                 written last, so its presence marks a complete image entry
- ``label.npz``  ``label``: uint8 ``[Z, S, S]`` manifest label values; built only when labels are asked
                 for, so stage 1 can prepare and read cases without opening a label file.

Every file is written atomically; a case whose entry exists and whose source files are unchanged is
skipped; ``overwrite`` rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from shared.atomic import write_atomic, write_json
from shared.errors import DataError, Problem, ZeusError
from shared.geometry import Geometry, from_array, resample_onto
from shared.manifest import Dataset
from shared.paths import check_case_id
from shared.preprocess import DEFAULT_IMAGE_SIZE, SliceTransform, normalise
from shared.readers import CaseSources, open_layout, select_cases
from shared.registration import coregister, read_label_on
from shared.workspace import preprocessed_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseMeta:
    case_id: str
    dataset: str
    modalities: tuple[str, ...]
    grid: Geometry
    original: Geometry
    transform: SliceTransform
    image_signature: str
    label_signature: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "dataset": self.dataset,
            "modalities": list(self.modalities),
            "grid": self.grid.to_json(),
            "original": self.original.to_json(),
            "transform": self.transform.to_json(),
            "image_signature": self.image_signature,
            "label_signature": self.label_signature,
        }

    def restore(self, slices: np.ndarray, *, is_label: bool) -> sitk.Image:
        """``[Z, S, S]`` model slices (labels or probabilities) -> image on the original reference grid.

        Inverse of preprocessing: crop the padding, resize to the native slice, undo the canonical flips.
        """
        native = from_array(self.transform.to_native(slices, is_label=is_label), self.grid)
        # The canonical grid differs from the original by flips only: voxel centres coincide, nearest is exact.
        return resample_onto(native, self.original, is_label=True)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaseMeta:
        return cls(
            case_id=data["case_id"],
            dataset=data["dataset"],
            modalities=tuple(data["modalities"]),
            grid=Geometry.from_json(data["grid"]),
            original=Geometry.from_json(data["original"]),
            transform=SliceTransform.from_json(data["transform"]),
            image_signature=data["image_signature"],
            label_signature=data.get("label_signature"),
        )


@dataclass
class PreprocessedCase:
    """image: float32 ``[C, Z, S, S]`` in [0, 1]; label: uint8 ``[Z, S, S]`` or None."""

    meta: CaseMeta
    image: np.ndarray
    label: np.ndarray | None

    @property
    def case_id(self) -> str:
        return self.meta.case_id


@dataclass
class PrepareSummary:
    built: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def files_signature(files: Iterable[Path]) -> str:
    """Hash of the files' names and contents: changes when a source file changes, and survives a copy, a move
    or a touch of the dataset (a path-and-mtime key re-encoded every cached image after each fresh copy).
    Hashing costs about a second per GB, small beside reading and resampling the images."""
    digest = hashlib.sha256()
    for f in sorted(files):
        with f.open("rb") as source:
            digest.update(f"{f.name}|{hashlib.file_digest(source, 'blake2b').hexdigest()}\n".encode())
    return digest.hexdigest()[:16]


class CaseCache:
    def __init__(self, dataset: Dataset, image_size: int = DEFAULT_IMAGE_SIZE, root: Path | None = None):
        if image_size < 16:
            raise ZeusError(f"image size must be at least 16 pixels, got {image_size}")
        self.dataset, self.image_size = dataset, image_size
        self.folder = (root or preprocessed_dir(dataset.name)) / f"{image_size}px"

    def case_dir(self, case_id: str) -> Path:
        return self.folder / check_case_id(case_id)

    def prepared_sizes(self) -> list[int]:
        """The image sizes this dataset has prepared cases at (any case), smallest first."""
        sizes = (p.parent.parent.name for p in self.folder.parent.glob("*px/*/meta.json"))
        return sorted({int(name[:-2]) for name in sizes if name[:-2].isdigit()})

    def cached_case_ids(self) -> list[str]:
        return sorted(p.parent.name for p in self.folder.glob("*/meta.json"))

    def prepare(
        self,
        case_ids: list[str] | None = None,
        *,
        with_labels: bool = True,
        overwrite: bool = False,
        workers: int = 1,
        progress: bool = True,
    ) -> PrepareSummary:
        """Build the entries of ``case_ids`` (default: all cases); problems are collected, not raised."""
        ids = select_cases(self.dataset, case_ids)
        summary = PrepareSummary()
        bar = tqdm(total=len(ids), desc=f"prepare {self.dataset.name}", unit="case", disable=not progress)
        jobs = [(self.dataset, self.image_size, self.folder, cid, with_labels, overwrite) for cid in ids]
        if workers > 1 and len(ids) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(_prepare_case, *job): job[3] for job in jobs}
                for future in as_completed(futures):
                    try:
                        _record(summary, *future.result())
                    except BrokenProcessPool:
                        raise _worker_died(futures, workers) from None
                    bar.update()
        else:
            for job in jobs:
                _record(summary, *_prepare_case(*job))
                bar.update()
        bar.close()
        return summary

    def prepare_sources(self, sources: CaseSources, *, overwrite: bool = False) -> CaseMeta:
        """Build the image entry of a case that is not part of the dataset's folder (a new scan to predict)."""
        _build_entry(self.dataset, self.image_size, self.case_dir(sources.case_id), sources, False, overwrite)
        return self.meta(sources.case_id)

    def meta(self, case_id: str) -> CaseMeta:
        path = self.case_dir(case_id) / "meta.json"
        if not path.is_file():
            raise ZeusError(f"case {case_id!r} of {self.dataset.name!r} is not prepared: run `zeus data prepare`")
        meta = _read_meta(path)
        if meta is None:
            raise ZeusError(f"{path} is damaged: run `zeus data prepare {self.dataset.name}` to rebuild the entry")
        return meta

    def load(self, case_id: str, *, with_label: bool = True) -> PreprocessedCase:
        meta = self.meta(case_id)
        image = _read_npz(self.case_dir(case_id) / "image.npz", "image", self.dataset.name).astype(np.float32)
        return PreprocessedCase(meta, image, self.label(case_id) if with_label else None)

    def label(self, case_id: str) -> np.ndarray:
        """uint8 ``[Z, S, S]`` label slices of a prepared case."""
        path = self.case_dir(case_id) / "label.npz"
        if not path.is_file():
            raise ZeusError(f"case {case_id!r} has no prepared label: run `zeus data prepare {self.dataset.name}`")
        return _read_npz(path, "label", self.dataset.name)


def _worker_died(futures: dict[Future, str], workers: int) -> ZeusError:
    """A preparation process was killed (by the kernel's out-of-memory killer, most often): say which cases
    were not prepared; what was prepared stays in the cache."""

    def prepared(future: Future) -> bool:
        return future.done() and not future.cancelled() and future.exception() is None

    missing = sorted(case for future, case in futures.items() if not prepared(future))
    return ZeusError(
        f"a preparation process stopped abruptly (killed for lack of memory?); {len(futures) - len(missing)} "
        f"case(s) were prepared and are kept, {len(missing)} were not: {', '.join(missing[:8])}"
        f"{' ...' if len(missing) > 8 else ''}. Rerun with fewer than --workers {workers} (each process holds a "
        "whole volume in memory); the prepared cases are skipped"
    )


def _read_meta(path: Path) -> CaseMeta | None:
    """A cache entry's meta.json, or None when it is damaged (truncated, not JSON, fields missing)."""
    try:
        return CaseMeta.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        return None


def _read_npz(path: Path, key: str, dataset: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as f:
            return f[key]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ZeusError(
            f"{path} is damaged ({type(e).__name__}): run `zeus data prepare {dataset}` to rebuild it"
        ) from None


def _npz_intact(path: Path, key: str) -> bool:
    """Cheap check that an archive opens and holds ``key`` (a truncated zip loses its central directory)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return f"{key}.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def _record(summary: PrepareSummary, case_id: str, status: str, problems: list[Problem]) -> None:
    {"built": summary.built, "skipped": summary.skipped}.get(status, []).append(case_id)
    summary.problems.extend(problems)


def _prepare_case(
    dataset: Dataset, image_size: int, folder: Path, case_id: str, with_labels: bool, overwrite: bool
) -> tuple[str, str, list[Problem]]:
    """Build one cache entry; returns (case_id, "built" | "skipped" | "failed", problems)."""
    sources = open_layout(dataset).sources(case_id)
    try:
        built = _build_entry(dataset, image_size, folder / check_case_id(case_id), sources, with_labels, overwrite)
    except DataError as e:
        return case_id, "failed", e.problems
    return case_id, "built" if built else "skipped", []


def _build_entry(
    dataset: Dataset, size: int, case_dir: Path, sources: CaseSources, with_labels: bool, overwrite: bool
) -> bool:
    if sources.problems:
        raise DataError(sources.problems)
    image_signature = files_signature(sources.image_files())
    meta_path = case_dir / "meta.json"
    meta = _read_meta(meta_path) if meta_path.is_file() else None  # damaged: rebuilt like a missing entry
    intact = meta is not None and _npz_intact(case_dir / "image.npz", "image")
    if overwrite or not intact or meta.image_signature != image_signature:
        meta = _build_images(dataset, size, case_dir, sources, image_signature)
    elif not with_labels or _label_current(meta, sources, case_dir, dataset.manifest.reference_modality):
        return False
    if with_labels:
        _build_label(dataset, case_dir, sources, meta)
    return True


def _build_images(dataset: Dataset, size: int, case_dir: Path, sources: CaseSources, signature: str) -> CaseMeta:
    manifest = dataset.manifest
    case = coregister(sources, manifest, with_label=False)
    transform = SliceTransform(native=case.grid.array_shape[1:], size=size)
    image = np.stack(
        [
            transform.to_model(normalise(case.images[m.name], m.normalisation), is_label=False)
            for m in manifest.modalities
        ]
    ).astype(np.float16)
    (case_dir / "label.npz").unlink(missing_ok=True)
    write_atomic(case_dir / "image.npz", lambda tmp: _savez(tmp, image=image))
    meta = CaseMeta(case.case_id, dataset.name, manifest.modality_names, case.grid, case.original, transform, signature)
    write_json(case_dir / "meta.json", meta.to_json())
    return meta


def _label_current(meta: CaseMeta, sources: CaseSources, case_dir: Path, reference: str) -> bool:
    current = meta.label_signature == _label_signature(sources, reference)
    return current and _npz_intact(case_dir / "label.npz", "label")


def _label_signature(sources: CaseSources, reference: str) -> str | None:
    label = sources.label_for(reference)
    return files_signature(label.source.files) if label and label.source.files else None


def _build_label(dataset: Dataset, case_dir: Path, sources: CaseSources, meta: CaseMeta) -> None:
    label = read_label_on(sources, dataset.manifest, meta.grid)
    slices = meta.transform.to_model(label, is_label=True)
    write_atomic(case_dir / "label.npz", lambda tmp: _savez(tmp, label=slices))
    signature = _label_signature(sources, dataset.manifest.reference_modality)
    write_json(case_dir / "meta.json", replace(meta, label_signature=signature).to_json())


def _savez(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` at zlib level 1: as small as level 6 on noisy images, twice as fast."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)
