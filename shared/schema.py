"""The instruction record: the Parquet contract between stage 1 (writer) and stage 2 (reader).

One row per (dataset, case, slice, modality, target), plus ``modality == "union"`` rows; the embedding is a
fixed-size float32 list; provenance lives in the file metadata under ``PROVENANCE_KEY``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

UNION = "union"

PROVENANCE_KEY = b"zeus.provenance"

# One JSON line per stage-1 run in a store folder: counts (requests, cached, model calls) and seconds.
RUN_LOG = "runs.jsonl"


def schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("dataset", pa.string(), nullable=False),
            pa.field("case_id", pa.string(), nullable=False),
            pa.field("slice_index", pa.int32(), nullable=False),
            pa.field("modality", pa.string(), nullable=False),
            pa.field("target", pa.string(), nullable=False),
            pa.field("label_value", pa.int16(), nullable=False),
            pa.field("request_key", pa.string(), nullable=False),
            pa.field("has_body", pa.bool_(), nullable=False),
            pa.field("description", pa.string(), nullable=False),
            pa.field("instruction", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("describe_model", pa.string(), nullable=False),
            pa.field("instruct_model", pa.string(), nullable=False),
            pa.field("embed_model", pa.string(), nullable=False),
            pa.field("prompt_hash", pa.string(), nullable=False),
        ]
    )


COLUMNS = tuple(schema(1).names)


def embeddings(table: pa.Table) -> np.ndarray:
    """``[N, D]`` float32 view of the embedding column."""
    column = table.column("embedding").combine_chunks()
    return column.values.to_numpy(zero_copy_only=False).reshape(len(table), column.type.list_size)
