"""The instruction store: THE contract between stage 1 (writer) and stage 2 and the report (readers).

Everything both sides must agree on lives here and nowhere else:

- **where**: ``$ZEUS_HOME/instructions/<dataset>/<tag>/<case>.parquet``, one shard per case, and the store's
  run log ``runs.jsonl`` beside the shards (one JSON line per stage-1 run: counts and seconds);
- **the tag**: ``<describe>.<instruct>.<embed>`` backend names (``store_tag``), and the named backend presets
  that stage 1's ``--backend`` and stage 2's ``--text`` refer to (``PRESETS``);
- **the rows**: one per (dataset, case, slice, modality, target), plus ``modality == "union"`` rows; an
  explicit pyarrow schema (never inferred), the embedding a fixed-size float32 list; provenance (models,
  revisions, prompt hashes, sampling parameters, package versions, the stage-1 configuration) in each
  file's metadata under ``PROVENANCE_KEY``.

Each shard is written atomically, so a crash loses at most the case in flight.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shared.atomic import write_atomic
from shared.errors import ZeusError
from shared.paths import check_case_id
from shared.workspace import instructions_dir

log = logging.getLogger(__name__)

UNION = "union"

PROVENANCE_KEY = b"zeus.provenance"

RUN_LOG = "runs.jsonl"


@dataclass(frozen=True)
class BackendNames:
    """Which backend runs each stage-1 step; their names make the store's tag."""

    describe: str
    instruct: str
    embed: str

    @property
    def tag(self) -> str:
        return store_tag(self.describe, self.instruct, self.embed)


# Stage 1's ``--backend`` presets. Stage 2's ``--text instructions`` reads the ``offline`` store and
# ``--text template`` the ``template`` one.
PRESETS = {
    "offline": BackendNames("image-facts", "transformers", "sentence-transformers"),
    "template": BackendNames("image-facts", "template", "sentence-transformers"),
    "transformers": BackendNames("transformers", "transformers", "transformers"),
    "vllm": BackendNames("vllm", "vllm", "vllm"),
}


def store_tag(describe: str, instruct: str, embed: str) -> str:
    """The default folder name of a store: the three backend names."""
    return f"{describe}.{instruct}.{embed}"


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
            pa.field("instruction_source", pa.string(), nullable=False),
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


class DamagedShard(ZeusError):
    """A shard that exists but cannot be read (truncated, not Parquet): rerunning stage 1 rewrites it."""


def _read(path: Path, read):
    try:
        return read(path)
    except (pa.ArrowException, OSError) as e:
        raise DamagedShard(
            f"{path} is damaged ({type(e).__name__}: {str(e)[:160]}): rerun `zeus instructions` for this dataset, "
            "which rewrites damaged shards"
        ) from None


@dataclass(frozen=True)
class RunLogEntry:
    """One stage-1 run over a store: what it was asked, what it found cached, what it computed, how long."""

    finished: str  # ISO 8601, UTC
    cases: int
    requests: int
    cached: int
    described: int
    instructed: int
    embedded: int
    no_body: int
    seconds: float
    model_calls: int | None = None  # None in logs written before the field existed
    unknown_targets: list[str] = field(default_factory=list)  # targets without a knowledge entry
    llm_kept: int = 0  # LLM instructions kept by the faithfulness check (0 in logs written before it)
    llm_replaced: int = 0  # ... replaced by the template sentence

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunLogEntry:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


class InstructionStore:
    """One store folder: a Parquet shard per case and the run log."""

    def __init__(self, folder: Path):
        self.folder = folder

    @classmethod
    def of(cls, dataset: str, tag: str) -> InstructionStore:
        """The store of a dataset's instructions written with ``tag``."""
        return cls(instructions_dir(dataset) / tag)

    @property
    def tag(self) -> str:
        return self.folder.name

    def shard(self, case_id: str) -> Path:
        return self.folder / f"{check_case_id(case_id)}.parquet"

    def case_ids(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.parquet"))

    def read_case(
        self, case_id: str, columns: Iterable[str] | None = None, filters: Sequence[tuple] | None = None
    ) -> pa.Table | None:
        """A case's rows (optionally only ``columns``, and rows matching pyarrow ``filters``), or None."""
        path = self.shard(case_id)
        if not path.is_file():
            return None
        return _read(path, lambda p: pq.read_table(p, columns=list(columns) if columns else None, filters=filters))

    def read(self, case_ids: Iterable[str] | None = None, columns: Iterable[str] | None = None) -> pa.Table:
        """The rows of several cases (default: all) as one table."""
        ids = list(case_ids) if case_ids is not None else self.case_ids()
        tables = [t for t in (self.read_case(c, columns) for c in ids) if t is not None]
        if not tables:
            raise ZeusError(f"no instructions in {self.folder}: run `zeus instructions` first")
        return pa.concat_tables(tables)

    def write_case(self, case_id: str, table: pa.Table) -> None:
        write_atomic(self.shard(case_id), lambda tmp: pq.write_table(table, tmp, compression="zstd"))

    def embedding_dim(self) -> int | None:
        """The embedding size of the store (None while it has no shard)."""
        ids = self.case_ids()
        return _read(self.shard(ids[0]), pq.read_schema).field("embedding").type.list_size if ids else None

    def provenance(self, case_id: str) -> dict[str, Any]:
        metadata = _read(self.shard(case_id), pq.read_schema).metadata or {}
        return json.loads(metadata.get(PROVENANCE_KEY, b"{}"))

    def stage1_config(self) -> dict[str, Any] | None:
        """The stage-1 configuration (as JSON) that wrote the store's first shard; None for an empty store."""
        ids = self.case_ids()
        return self.provenance(ids[0]).get("config") if ids else None

    def append_run(self, entry: RunLogEntry) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / RUN_LOG).open("a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(entry)) + "\n")

    def runs(self) -> list[RunLogEntry]:
        """Every stage-1 run recorded in the store's run log, oldest first."""
        path = self.folder / RUN_LOG
        if not path.is_file():
            return []
        entries = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                entries.append(RunLogEntry.from_json(json.loads(line)))
            except (json.JSONDecodeError, TypeError, AttributeError):  # a line cut short by a kill or a full disk
                log.warning("%s line %d is damaged and left out: %r", path, number, line[:80])
        return entries
