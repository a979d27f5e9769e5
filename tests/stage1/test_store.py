from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared.schema import embeddings, schema
from stage1_instruct.store import InstructionStore, to_table


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
