"""The instruction store: Parquet shards, one per case, under ``$ZEUS_HOME/instructions/<dataset>/<tag>/``.

One row per (dataset, case, slice, modality, target), plus one ``modality == "union"`` row per (slice,
target). An explicit schema (never inferred), a fixed-size float32 embedding, and provenance (models,
revisions, prompt hashes, sampling parameters, package versions) in each file's metadata. Each shard is
written atomically, so a crash loses at most the case in flight.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shared.atomic import write_atomic
from shared.errors import ZeusError
from shared.schema import COLUMNS, PROVENANCE_KEY, schema


def to_table(rows: list[dict[str, Any]], dim: int, provenance: dict[str, Any]) -> pa.Table:
    """Rows (dicts with every column; ``embedding`` a length-``dim`` vector) -> a table with the schema."""
    columns = {name: [row[name] for row in rows] for name in COLUMNS if name != "embedding"}
    vectors = np.asarray([row["embedding"] for row in rows], np.float32).reshape(len(rows), dim)
    arrays = [
        pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), dim)
        if name == "embedding"
        else pa.array(columns[name], type=field.type)
        for name, field in zip(COLUMNS, schema(dim), strict=True)
    ]
    meta = {PROVENANCE_KEY: json.dumps(provenance, sort_keys=True).encode()}
    return pa.Table.from_arrays(arrays, schema=schema(dim).with_metadata(meta))


class InstructionStore:
    def __init__(self, folder: Path):
        self.folder = folder

    def shard(self, case_id: str) -> Path:
        return self.folder / f"{case_id}.parquet"

    def case_ids(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.parquet"))

    def read_case(self, case_id: str, columns: Iterable[str] | None = None) -> pa.Table | None:
        path = self.shard(case_id)
        return pq.read_table(path, columns=list(columns) if columns else None) if path.is_file() else None

    def write_case(self, case_id: str, table: pa.Table) -> None:
        write_atomic(self.shard(case_id), lambda tmp: pq.write_table(table, tmp, compression="zstd"))

    def read(self, case_ids: Iterable[str] | None = None, columns: Iterable[str] | None = None) -> pa.Table:
        ids = list(case_ids) if case_ids is not None else self.case_ids()
        tables = [t for t in (self.read_case(c, columns) for c in ids) if t is not None]
        if not tables:
            raise ZeusError(f"no instructions in {self.folder}: run `zeus instructions` first")
        return pa.concat_tables(tables)

    def provenance(self, case_id: str) -> dict[str, Any]:
        metadata = pq.read_schema(self.shard(case_id)).metadata or {}
        return json.loads(metadata.get(PROVENANCE_KEY, b"{}"))
