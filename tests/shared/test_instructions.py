from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared.instructions import PRESETS, InstructionStore, RunLogEntry, embeddings, schema, store_tag, to_table


def _row(i: int, dim: int) -> dict:
    return {
        "dataset": "ds",
        "case_id": "c1",
        "slice_index": i,
        "modality": "T2",
        "target": "liver",
        "label_value": 1,
        "request_key": f"k{i}",
        "has_body": i % 2 == 0,
        "description": "{}",
        "instruction": f"Segment {i}",
        "instruction_source": "template",
        "embedding": np.arange(dim, dtype=np.float32) + i,
        "describe_model": "d",
        "instruct_model": "i",
        "embed_model": "e",
        "prompt_hash": "p",
    }


def test_schema_round_trip_keeps_types_values_and_provenance(tmp_path):
    store = InstructionStore(tmp_path / "store")
    table = to_table([_row(0, 8), _row(1, 8)], 8, {"models": {"embed": "e"}})
    store.write_case("c1", table)
    back = store.read_case("c1")
    assert back.schema.remove_metadata() == schema(8)
    assert back.schema.field("embedding").type == pa.list_(pa.float32(), 8)
    assert back.schema.field("slice_index").type == pa.int32()
    np.testing.assert_array_equal(embeddings(back), [np.arange(8) + 0, np.arange(8) + 1])
    assert back.column("has_body").to_pylist() == [True, False]
    assert store.provenance("c1") == {"models": {"embed": "e"}}
    assert pq.read_metadata(store.shard("c1")).num_rows == 2
    assert store.case_ids() == ["c1"]
    assert not list((tmp_path / "store").glob("*.tmp"))


def test_a_wrong_embedding_size_is_refused():
    with pytest.raises((ValueError, pa.ArrowInvalid)):
        to_table([_row(0, 8)], 4, {})


def test_run_log_round_trips_and_reads_lines_written_before_model_calls(tmp_path):
    store = InstructionStore(tmp_path / "store")
    old = {"finished": "2026-01-01T00:00:00+00:00", "cases": 1, "requests": 8, "cached": 0, "described": 4}
    old |= {"instructed": 2, "embedded": 2, "no_body": 0, "seconds": 1.5}
    store.folder.mkdir()
    (store.folder / "runs.jsonl").write_text(json.dumps(old) + "\n", encoding="utf-8")
    new = RunLogEntry("2026-01-02T00:00:00+00:00", 1, 8, 8, 0, 0, 0, 0, 0.1, model_calls=0)
    store.append_run(new)
    first, second = store.runs()
    assert first.model_calls is None and first.requests == 8 and first.seconds == 1.5
    assert second == new


def test_store_tags_follow_the_backend_names():
    assert PRESETS["offline"].tag == store_tag("image-facts", "transformers", "sentence-transformers")
    assert PRESETS["template"].tag == store_tag("image-facts", "template", "sentence-transformers")
    assert InstructionStore.of("ds", PRESETS["template"].tag).tag == PRESETS["template"].tag
