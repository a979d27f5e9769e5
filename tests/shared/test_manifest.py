from __future__ import annotations

import json

import pytest

from shared.errors import ZeusError
from shared.manifest import builtin_manifests, resolve_dataset


def test_builtin_manifests_load_with_their_contracts(tmp_path):
    assert builtin_manifests() == ["chaos", "chaos_ct", "demo", "msd_brain", "msd_prostate"]
    for name in builtin_manifests():
        dataset = resolve_dataset(name, tmp_path)
        manifest = dataset.manifest
        assert manifest.labels["background"] == 0
        assert manifest.reference_modality in manifest.modality_names
        assert manifest.obtain, name
    chaos = resolve_dataset("chaos", tmp_path).manifest
    assert chaos.modality_names == ("T1_in", "T1_out", "T2")
    assert chaos.targets == {"liver": 1, "right kidney": 2, "left kidney": 3, "spleen": 4}
    assert chaos.mask_grey_levels["spleen"] == (240, 255)
    ct = resolve_dataset("chaos_ct", tmp_path).manifest
    assert ct.modality("CT").normalisation.window == (-160.0, 240.0)
    brain = resolve_dataset("msd_brain", tmp_path).manifest
    assert brain.modality_names == ("FLAIR", "T1w", "T1gd", "T2w")
    assert [m.channel for m in brain.modalities] == [0, 1, 2, 3]


def test_missing_data_root_says_where_to_get_the_data(monkeypatch, tmp_path):
    with pytest.raises(ZeusError, match=r"(?s)ZEUS_DATA_ROOT is not set.*medicaldecathlon\.com"):
        resolve_dataset("msd_prostate")
    monkeypatch.setenv("ZEUS_DATA_ROOT", str(tmp_path))
    with pytest.raises(ZeusError, match=f"(?s)not found at {tmp_path}/Task05_Prostate.*medicaldecathlon"):
        resolve_dataset("msd_prostate")
    with pytest.raises(ZeusError, match="does not exist"):
        resolve_dataset("chaos", tmp_path / "nowhere")


def test_demo_root_defaults_to_the_workspace(zeus_home):
    (zeus_home / "demo" / "Task90_ZeusDemo").mkdir(parents=True)
    assert resolve_dataset("demo").root == zeus_home / "demo" / "Task90_ZeusDemo"


def _write(folder, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(data), encoding="utf-8")
    return folder


def test_msd_dataset_json_by_path_with_generic_modality_names(tmp_path):
    folder = _write(
        tmp_path / "Task05_Prostate",
        {
            "name": "PROSTATE",
            "modality": {"0": "MRI", "1": "CT"},
            "labels": {"0": "background", "1": "PZ", "2": "TZ"},
        },
    )
    dataset = resolve_dataset(str(folder))
    assert dataset.name == "prostate" and dataset.root == folder
    m = dataset.manifest
    assert m.layout == "msd"
    assert m.modality_names == ("MRI", "CT")
    assert m.modality("MRI").normalisation.scheme == "percentile"
    assert m.modality("CT").normalisation.scheme == "ct_window"
    assert m.labels == {"background": 0, "PZ": 1, "TZ": 2}


def test_nnunet_dataset_json_by_path(tmp_path):
    folder = _write(
        tmp_path / "Dataset005_Prostate",
        {
            "channel_names": {"1": "ADC", "0": "T2"},
            "labels": {"background": 0, "PZ": 1, "TZ": 2},
            "file_ending": ".nii.gz",
        },
    )
    m = resolve_dataset(str(folder)).manifest
    assert m.layout == "nnunet_v2" and m.name == "dataset005_prostate"
    assert [(x.name, x.channel) for x in m.modalities] == [("T2", 0), ("ADC", 1)]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"channel_names": {"0": "CT"}, "labels": {"background": 0, "whole": [1, 2]}}, "region-based labels"),
        ({"images": []}, "expected 'channel_names'"),
        ({"modality": {"0": "T2"}, "labels": {"0": "background", "1": "a", "2": "a"}}, "label names repeat"),
    ],
)
def test_bad_dataset_json_is_a_clear_error(tmp_path, data, message):
    folder = _write(tmp_path / "ds", data)
    with pytest.raises(ZeusError, match=message):
        resolve_dataset(str(folder))


def test_bad_manifest_file_is_a_clear_error(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(
        json.dumps(
            {
                "name": "mine",
                "layout": "msd",
                "modalities": [{"name": "T2"}],
                "labels": {"background": 0, "x": 1},
                "reference_modality": "ADC",
            }
        ),
        encoding="utf-8",
    )
    with pytest.raises(ZeusError, match="reference modality 'ADC' is not in"):
        resolve_dataset(str(path), tmp_path)
    path.write_text(json.dumps({"name": "mine", "layout": "msd"}), encoding="utf-8")
    with pytest.raises(ZeusError, match="missing or malformed field"):
        resolve_dataset(str(path), tmp_path)
    with pytest.raises(ZeusError, match="unknown dataset 'nope'"):
        resolve_dataset("nope")
