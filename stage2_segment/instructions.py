"""Stage 2's side of the Parquet contract: instruction embeddings per case as a dense array.

Reads ``$ZEUS_HOME/instructions/<dataset>/<tag>/<case>.parquet`` (columns ``slice_index``, ``modality``,
``target``, ``embedding``) with pyarrow alone: stage 2 never imports stage 1, nor any LLM.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from shared.errors import ZeusError
from shared.manifest import Manifest
from shared.schema import UNION, embeddings
from shared.workspace import instructions_dir

COLUMNS = ["slice_index", "modality", "target", "embedding"]


class InstructionTable:
    def __init__(self, manifest: Manifest, tag: str, folder: Path | None = None):
        self.manifest = manifest
        self.folder = folder or instructions_dir(manifest.name) / tag
        if not self.folder.is_dir():
            raise ZeusError(
                f"no instructions at {self.folder}: run `zeus instructions {manifest.name}` (tag {tag!r}) first"
            )
        self.rows = {m: i for i, m in enumerate((*manifest.modality_names, UNION))}
        self.columns = {t: i for i, t in enumerate(manifest.targets)}
        self.dim = pq.read_schema(next(self.folder.glob("*.parquet"))).field("embedding").type.list_size

    @lru_cache(maxsize=64)  # noqa: B019 - bounded: a case's array is small, the table lives with its dataset
    def for_case(self, case_id: str) -> np.ndarray:
        """float32 ``[Z, M + 1, T, D]``: per slice, modality (union last) and target."""
        path = self.folder / f"{case_id}.parquet"
        if not path.is_file():
            raise ZeusError(f"case {case_id!r} has no instructions in {self.folder}: run `zeus instructions` for it")
        table = pq.read_table(path, columns=COLUMNS)
        slices = np.asarray(table.column("slice_index"))
        rows = np.asarray([self.rows[m] for m in table.column("modality").to_pylist()])
        cols = np.asarray([self.columns[t] for t in table.column("target").to_pylist()])
        vectors = embeddings(table)
        out = np.full((slices.max() + 1, len(self.rows), len(self.columns), self.dim), np.nan, np.float32)
        out[slices, rows, cols] = vectors
        if np.isnan(out).any():
            raise ZeusError(
                f"instructions of case {case_id!r} in {self.folder} are incomplete: rerun `zeus instructions`"
            )
        return out

    def text(self, case_id: str, slice_index: int, modality: str, target: str) -> str:
        """The instruction written for one (slice, modality or ``"union"``, target): what the model was told."""
        table = pq.read_table(
            self.folder / f"{case_id}.parquet",
            columns=["instruction"],
            filters=[("slice_index", "=", slice_index), ("modality", "=", modality), ("target", "=", target)],
        )
        if table.num_rows != 1:
            raise ZeusError(f"expected one instruction for {case_id} slice {slice_index} {modality} {target}")
        return table.column("instruction")[0].as_py()
