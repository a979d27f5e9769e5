from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from shared.instructions import PRESETS, InstructionStore
from stage1_instruct.config import Stage1Config
from stage1_instruct.describe import DescribeItem
from stage1_instruct.describe.image_facts import ImageFactsDescriber
from stage1_instruct.knowledge import knowledge_for, unknown_targets
from stage1_instruct.runners import run_local


@pytest.mark.parametrize(
    ("spelling", "entry"),
    [
        ("right_kidney", "right kidney"),
        ("kidney_right", "right kidney"),
        ("Kidney (R)", "right kidney"),
        ("R kidney", "right kidney"),
        ("RK", "right kidney"),
        ("left-kidney", "left kidney"),
        ("LK", "left kidney"),
        ("Liver", "liver"),
        ("PZ", "peripheral zone"),
        ("peripheral_zone", "peripheral zone"),
        ("TZ", "transition zone"),
        ("ET", "enhancing tumour"),
        ("enhancing tumor", "enhancing tumour"),
        ("Non-Enhancing Tumor", "non-enhancing tumour"),
        ("NCR/NET", "non-enhancing tumour"),
        ("peritumoral oedema", "edema"),
    ],
)
def test_names_as_users_write_them_find_their_entry(spelling, entry):
    found, expected = knowledge_for(spelling), knowledge_for(entry)
    assert found.known and found.location == expected.location and found.side == expected.side


def test_left_and_right_stay_apart_and_an_unknown_target_is_not_described_as_known():
    assert knowledge_for("right_kidney").side == "right" and knowledge_for("left_kidney").side == "left"
    unknown = knowledge_for("gallbladder")
    assert not unknown.known and "either side" not in unknown.location
    assert unknown_targets(["liver", "right_kidney", "left_kidney", "spleen", "gallbladder"]) == ["gallbladder"]
    assert knowledge_for("liver").looks_in("T2SPIR") == knowledge_for("liver").looks_in("T2")  # modality prefix
    image = np.zeros((32, 32), np.float32)
    image[8:24, 8:24] = 0.8
    item = DescribeItem(image, (32, 32), "T2", "T2-weighted MRI", "gallbladder", 0.5)
    location = ImageFactsDescriber().describe([item])[0]["location"]
    assert "either side" not in location and "no prior knowledge" in location


def test_a_run_warns_about_targets_without_knowledge_and_logs_them(tiny_dataset, caplog):
    folder = tiny_dataset.root
    data = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    data["labels"] = {**data["labels"], "4": "gallbladder"}  # rename the spleen
    (folder / "dataset.json").write_text(json.dumps(data), encoding="utf-8")
    from shared.manifest import resolve_dataset

    dataset = resolve_dataset(str(folder))
    config = Stage1Config(instruct="template", image_size=64)
    with caplog.at_level(logging.WARNING):
        run_local(dataset, config, ["demo_001"], progress=False)
    assert "no knowledge entry for the target(s) ['gallbladder']" in caplog.text
    (entry,) = InstructionStore.of(dataset.name, PRESETS["template"].tag).runs()
    assert entry.unknown_targets == ["gallbladder"]
