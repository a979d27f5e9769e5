"""Dataset manifests: what a dataset's files hold and where they are.

A manifest is a JSON file in ``data_manifests/`` (``chaos``, ``msd_prostate``, ...), or is derived from
the ``dataset.json`` of any MSD or nnU-Net v2 folder given by path.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from shared.errors import ZeusError
from shared.workspace import slug, zeus_home

MANIFEST_DIR = Path(os.environ.get("ZEUS_MANIFESTS", Path(__file__).resolve().parents[1] / "data_manifests"))

LayoutKind = Literal["msd", "nnunet_v2", "chaos_mr", "chaos_ct"]
LAYOUTS: tuple[str, ...] = ("msd", "nnunet_v2", "chaos_mr", "chaos_ct")

# Soft-tissue window (W400/L40): the default for a CT channel of a dataset given by path.
DEFAULT_CT_WINDOW = (-160.0, 240.0)
DEFAULT_MR_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class Normalisation:
    """How raw intensities become [0, 1]: a fixed CT window (HU) or a per-volume percentile clip."""

    scheme: Literal["ct_window", "percentile"]
    window: tuple[float, float] = DEFAULT_CT_WINDOW
    percentiles: tuple[float, float] = DEFAULT_MR_PERCENTILES

    def __post_init__(self) -> None:
        if self.scheme not in ("ct_window", "percentile"):
            raise ZeusError(f"normalisation scheme must be 'ct_window' or 'percentile', got {self.scheme!r}")
        lo, hi = self.window if self.scheme == "ct_window" else self.percentiles
        if not lo < hi:
            raise ZeusError(f"normalisation bounds must increase, got [{lo}, {hi}]")

    @classmethod
    def for_modality_name(cls, name: str) -> Normalisation:
        """nnU-Net's convention: a channel named CT is windowed, anything else is MR-like."""
        is_ct = re.fullmatch(r"\s*ct\b.*", name, flags=re.IGNORECASE) is not None
        return cls("ct_window") if is_ct else cls("percentile")

    def to_json(self) -> dict[str, Any]:
        if self.scheme == "ct_window":
            return {"scheme": self.scheme, "window": list(self.window)}
        return {"scheme": self.scheme, "percentiles": list(self.percentiles)}


@dataclass(frozen=True)
class Modality:
    """One channel of a dataset.

    ``name`` is the short key used everywhere (``"T2"``); ``description`` is the phrase stage 1 puts in
    prompts (``"T2-weighted MRI"``); ``channel`` the index in a 4-D MSD file or nnU-Net's ``_XXXX``
    suffix; ``source``/``mask`` the folders of a CHAOS patient holding the DICOM series and its masks.
    """

    name: str
    description: str
    channel: int
    normalisation: Normalisation
    source: str | None = None
    mask: str | None = None


@dataclass(frozen=True)
class Manifest:
    name: str
    title: str
    layout: LayoutKind
    modalities: tuple[Modality, ...]
    labels: dict[str, int]
    reference_modality: str
    default_root: str | None = None
    obtain: str = ""
    mask_grey_levels: dict[str, tuple[int, int]] = field(default_factory=dict)
    file_ending: str = ".nii.gz"

    def __post_init__(self) -> None:
        where = f"manifest {self.name!r}"
        if self.layout not in LAYOUTS:
            raise ZeusError(f"{where}: layout must be one of {LAYOUTS}, got {self.layout!r}")
        if not self.modalities:
            raise ZeusError(f"{where}: no modalities")
        names = [m.name for m in self.modalities]
        if len(set(names)) != len(names):
            raise ZeusError(f"{where}: modality names repeat: {names}")
        if self.reference_modality not in names:
            raise ZeusError(f"{where}: reference modality {self.reference_modality!r} is not in {names}")
        if self.labels.get("background") != 0:
            raise ZeusError(f"{where}: labels must map 'background' to 0, got {self.labels}")
        values = list(self.labels.values())
        if len(set(values)) != len(values) or min(values) < 0 or max(values) > 255:
            raise ZeusError(f"{where}: label values must be distinct integers in 0..255, got {self.labels}")
        unknown = set(self.mask_grey_levels) - set(self.labels)
        if unknown:
            raise ZeusError(f"{where}: mask_grey_levels names labels not in 'labels': {sorted(unknown)}")

    @property
    def modality_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modalities)

    @property
    def targets(self) -> dict[str, int]:
        """Foreground labels, name -> value."""
        return {k: v for k, v in self.labels.items() if v != 0}

    def modality(self, name: str) -> Modality:
        for m in self.modalities:
            if m.name == name:
                return m
        raise ZeusError(f"dataset {self.name!r} has no modality {name!r}; it has {list(self.modality_names)}")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "layout": self.layout,
            "reference_modality": self.reference_modality,
            "modalities": [
                {
                    "name": m.name,
                    "description": m.description,
                    "channel": m.channel,
                    "normalisation": m.normalisation.to_json(),
                    **({"source": m.source} if m.source else {}),
                    **({"mask": m.mask} if m.mask else {}),
                }
                for m in self.modalities
            ],
            "labels": self.labels,
            **(
                {"mask_grey_levels": {k: list(v) for k, v in self.mask_grey_levels.items()}}
                if self.mask_grey_levels
                else {}
            ),
            "file_ending": self.file_ending,
            "default_root": self.default_root,
            "obtain": self.obtain,
        }


@dataclass(frozen=True)
class Dataset:
    """A manifest bound to the folder holding its files."""

    manifest: Manifest
    root: Path

    @property
    def name(self) -> str:
        return self.manifest.name


def builtin_manifests() -> list[str]:
    return sorted(p.stem for p in MANIFEST_DIR.glob("*.json"))


def resolve_dataset(spec: str, root: Path | None = None) -> Dataset:
    """``spec`` is a built-in manifest name, a manifest JSON file, or a folder holding a ``dataset.json``."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if root is not None and root.resolve() != path.resolve():
            raise ZeusError(f"{spec} is a dataset folder; --root {root} would contradict it, leave it out")
        return Dataset(manifest_from_dataset_json(path), path)
    manifest = resolve_manifest(spec)
    return Dataset(manifest, _resolve_root(manifest, root))


def resolve_manifest(spec: str) -> Manifest:
    """The manifest alone (no data needed): a built-in name, a manifest JSON file, or a dataset folder."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return manifest_from_dataset_json(path)
    if path.suffix == ".json" and path.is_file():
        return manifest_from_json(_read_json(path), source=path)
    if (MANIFEST_DIR / f"{spec}.json").is_file():
        return manifest_from_json(_read_json(MANIFEST_DIR / f"{spec}.json"), source=MANIFEST_DIR)
    if not path.exists() and (len(path.parts) > 1 or path.suffix == ".json"):
        raise ZeusError(f"{spec} does not exist: give an existing dataset folder (with dataset.json) or manifest file")
    raise ZeusError(
        f"unknown dataset {spec!r}: expected one of {builtin_manifests()}, a manifest .json file, "
        "or a folder holding an MSD / nnU-Net v2 dataset.json"
    )


def _resolve_root(manifest: Manifest, root: Path | None) -> Path:
    how_to_get = f"\nTo obtain it: {manifest.obtain}" if manifest.obtain else ""
    if root is not None:
        if not root.is_dir():
            raise ZeusError(f"data root {root} for dataset {manifest.name!r} does not exist.{how_to_get}")
        return root
    if not manifest.default_root:
        raise ZeusError(f"dataset {manifest.name!r} has no default location: pass --root.{how_to_get}")
    if "{ZEUS_DATA_ROOT}" in manifest.default_root and not os.environ.get("ZEUS_DATA_ROOT"):
        raise ZeusError(
            f"dataset {manifest.name!r} is expected at {manifest.default_root}, but ZEUS_DATA_ROOT is not set: "
            f"set it, or pass --root.{how_to_get}"
        )
    default = Path(
        manifest.default_root.format(ZEUS_DATA_ROOT=os.environ.get("ZEUS_DATA_ROOT", ""), ZEUS_HOME=zeus_home())
    )
    if not default.is_dir():
        raise ZeusError(
            f"dataset {manifest.name!r} not found at {default} (from {manifest.default_root}): "
            f"pass --root or put the data there.{how_to_get}"
        )
    return default


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ZeusError(f"cannot read {path} as JSON: {e}") from None
    if not isinstance(data, dict):
        raise ZeusError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def manifest_from_json(data: dict[str, Any], source: Path) -> Manifest:
    try:
        modalities = tuple(
            Modality(
                name=m["name"],
                description=m.get("description", m["name"]),
                channel=int(m.get("channel", i)),
                normalisation=_normalisation(m.get("normalisation"), m["name"]),
                source=m.get("source"),
                mask=m.get("mask"),
            )
            for i, m in enumerate(data["modalities"])
        )
        return Manifest(
            name=data["name"],
            title=data.get("title", data["name"]),
            layout=data["layout"],
            modalities=modalities,
            labels={str(k): int(v) for k, v in data["labels"].items()},
            reference_modality=data.get("reference_modality", modalities[0].name),
            default_root=data.get("default_root"),
            obtain=data.get("obtain", ""),
            mask_grey_levels={k: (int(v[0]), int(v[1])) for k, v in data.get("mask_grey_levels", {}).items()},
            file_ending=data.get("file_ending", ".nii.gz"),
        )
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ZeusError(f"manifest {source}: missing or malformed field ({type(e).__name__}: {e})") from None


def _normalisation(spec: dict[str, Any] | None, modality_name: str) -> Normalisation:
    if spec is None:
        return Normalisation.for_modality_name(modality_name)
    return Normalisation(
        scheme=spec["scheme"],
        window=tuple(spec.get("window", DEFAULT_CT_WINDOW)),
        percentiles=tuple(spec.get("percentiles", DEFAULT_MR_PERCENTILES)),
    )


def manifest_from_dataset_json(folder: Path) -> Manifest:
    """Derive a manifest from an MSD (``modality``) or nnU-Net v2 (``channel_names``) ``dataset.json``."""
    path = folder / "dataset.json"
    if not path.is_file():
        raise ZeusError(f"{folder} holds no dataset.json: expected an MSD or nnU-Net v2 dataset folder")
    data = _read_json(path)
    if "channel_names" in data:
        layout, channels = "nnunet_v2", _index_map(data["channel_names"], "channel_names", path)
        if "labels" not in data:
            raise ZeusError(f"{path}: an nnU-Net v2 dataset.json needs 'labels' (name -> integer), found none")
        labels = _nnunet_labels(data["labels"], path)
    elif "modality" in data:
        layout, channels = "msd", _index_map(data["modality"], "modality", path)
        by_value = _index_map(data.get("labels", {}), "labels", path)
        names = list(by_value.values())
        if len(set(names)) != len(names):
            raise ZeusError(f"{path}: label names repeat: {names}; give each label value its own name")
        labels = {name: value for value, name in by_value.items()}
    else:
        raise ZeusError(f"{path}: expected 'channel_names' (nnU-Net v2) or 'modality' (MSD), found {sorted(data)}")
    if not channels:
        raise ZeusError(f"{path}: no channels: '{'channel_names' if layout == 'nnunet_v2' else 'modality'}' is empty")
    modalities = tuple(
        Modality(name, name, index, Normalisation.for_modality_name(name)) for index, name in sorted(channels.items())
    )
    labels = {("background" if v == 0 else k): v for k, v in labels.items()}
    return Manifest(
        name=slug(str(data.get("name") or folder.name)) or "dataset",
        title=str(data.get("description") or data.get("name") or folder.name),
        layout=layout,
        modalities=modalities,
        labels=labels,
        reference_modality=modalities[0].name,
        file_ending=data.get("file_ending", ".nii.gz"),
        obtain=f"it was given by path: {folder}",
    )


def _index_map(value: Any, field: str, path: Path) -> dict[int, str]:
    """An MSD-style ``{"0": "T2", "1": "ADC"}`` mapping as ``{0: "T2", 1: "ADC"}``; anything else is refused."""
    example = '{"0": "T2", "1": "ADC"}'
    if not isinstance(value, dict):
        raise ZeusError(f"{path}: '{field}' must map integer indices to names, like {example}; found {value!r}")
    out = {}
    for key, name in value.items():
        if not re.fullmatch(r"\s*\d+\s*", str(key)) or not isinstance(name, str | int | float):
            raise ZeusError(
                f"{path}: '{field}' must map integer indices to names, like {example}; found {key!r}: {name!r}"
            )
        out[int(key)] = str(name)
    return out


def _nnunet_labels(labels: Any, path: Path) -> dict[str, int]:
    if not isinstance(labels, dict):
        raise ZeusError(f"{path}: 'labels' must map names to integers, like {{\"background\": 0}}; found {labels!r}")
    regions = [k for k, v in labels.items() if isinstance(v, list | tuple)]
    if regions:
        raise ZeusError(f"{path}: region-based labels {regions} are not supported; give one integer per label")
    bad = {k: v for k, v in labels.items() if isinstance(v, bool) or not isinstance(v, int)}
    if bad:
        raise ZeusError(f"{path}: label values must be integers (name -> value), found {bad}")
    return {str(k): int(v) for k, v in labels.items()}
