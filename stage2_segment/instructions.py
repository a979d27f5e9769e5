"""Stage 2's side of the instruction contract: a store's embeddings per case as a dense array.

Reads the stage-1 store through ``shared.instructions`` (columns ``slice_index``, ``modality``, ``target``,
``embedding``) with pyarrow alone: stage 2 never imports stage 1, nor any LLM.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np
import pyarrow as pa

from shared.errors import ZeusError
from shared.instructions import UNION, InstructionStore, embeddings
from shared.manifest import Manifest
from stage2_segment.config import SHUFFLED, TrainConfig

COLUMNS = ["slice_index", "modality", "target", "embedding"]


class InstructionTable:
    """A store's embeddings per case. With ``shuffle_seed`` (the ``--text shuffled`` control) every slice gets
    the instruction of another slice of the same case, modality and target (a derangement drawn from the seed
    and the case): the class is kept, whatever the text says about this slice is not."""

    def __init__(
        self, manifest: Manifest, tag: str, store: InstructionStore | None = None, shuffle_seed: int | None = None
    ):
        self.manifest = manifest
        self.shuffle_seed = shuffle_seed
        self.store = store or InstructionStore.of(manifest.name, tag)
        dim = self.store.embedding_dim()
        if dim is None:
            raise ZeusError(
                f"no instructions at {self.store.folder}: run `zeus instructions {manifest.name}` (tag {tag!r}) first"
            )
        self.dim = dim
        self.rows = {m: i for i, m in enumerate((*manifest.modality_names, UNION))}
        self.columns = {t: i for i, t in enumerate(manifest.targets)}

    def check_image_size(self, image_size: int) -> None:
        """The instructions describe slices at one image size: training at another mixes two preprocessings."""
        written = (self.store.stage1_config() or {}).get("image_size", image_size)
        if written != image_size:
            raise ZeusError(
                f"the instructions in {self.store.folder} were written from {written} px slices, not "
                f"--image-size {image_size}: pass --image-size {written}, or rerun `zeus instructions "
                f"{self.manifest.name} --image-size {image_size}`"
            )

    @lru_cache(maxsize=64)  # noqa: B019 - bounded: a case's array is small, the table lives with its dataset
    def for_case(self, case_id: str) -> np.ndarray:
        """float32 ``[Z, M + 1, T, D]``: per slice, modality (union last) and target."""
        table = self.store.read_case(case_id, COLUMNS)
        if table is None:
            raise ZeusError(
                f"case {case_id!r} has no instructions in {self.store.folder}: run `zeus instructions` for it"
            )
        slices, rows, cols, vectors = self._checked(table, case_id)
        out = np.full((slices.max() + 1, len(self.rows), len(self.columns), self.dim), np.nan, np.float32)
        out[slices, rows, cols] = vectors
        if np.isnan(out).any():
            raise ZeusError(
                f"instructions of case {case_id!r} in {self.store.folder} are incomplete: rerun `zeus instructions`"
            )
        if self.shuffle_seed is not None:
            for m in range(out.shape[1]):
                for t in range(out.shape[2]):
                    out[:, m, t] = out[self._sources(case_id, m, t, len(out)), m, t]
        return out

    def _checked(self, table: pa.Table, case_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A shard's slice indices, row (modality) and column (target) indices and embeddings, each checked
        before anything is allocated from them: a shard is data, and a damaged or planted one must not index
        outside the case, name an unknown modality, or hand the model NaN."""
        shard = self.store.shard(case_id)

        def refused(what: str, how: str = "rerun") -> ZeusError:
            return ZeusError(f"{shard}: {what}: {how} `zeus instructions {self.manifest.name}` to rewrite it")

        kind = table.schema.field("embedding").type
        if not pa.types.is_fixed_size_list(kind) or kind.list_size != self.dim:
            found = f"{kind.list_size} numbers" if pa.types.is_fixed_size_list(kind) else f"type {kind}"
            raise refused(f"embeddings of {found}, the store's have {self.dim}", "delete the shard and rerun")
        slices = np.asarray(table.column("slice_index").to_numpy(), np.int64)
        per_slice = len(self.rows) * len(self.columns)
        if len(slices) == 0 or slices.min() < 0 or len(slices) != (slices.max() + 1) * per_slice:
            span = f"slice_index {slices.min()}..{slices.max()}" if len(slices) else "no rows"
            raise refused(f"expected {per_slice} rows per slice, from slice 0 on; found {len(slices)} rows, {span}")
        indices = []
        for name, known in (("modality", self.rows), ("target", self.columns)):
            values = table.column(name).to_pylist()
            unknown = sorted(set(values) - set(known), key=str)
            if unknown:
                raise refused(f"{name} {unknown[0]!r} is not one of {list(known)}")
            indices.append(np.asarray([known[v] for v in values]))
        vectors = embeddings(table)
        bad = int((~np.isfinite(vectors).all(axis=1)).sum())
        if bad:
            raise refused(f"{bad} embedding(s) with NaN or infinite values")
        return slices, indices[0], indices[1], vectors

    def _sources(self, case_id: str, modality: int, target: int, n_slices: int) -> np.ndarray:
        """For each slice, the slice whose instruction it reads: a derangement (no slice keeps its own when
        there are two or more), the same for a case, modality and target at every call."""
        rng = np.random.default_rng([self.shuffle_seed, zlib.crc32(case_id.encode()), modality, target])
        order = rng.permutation(n_slices)
        sources = np.empty(n_slices, np.int64)
        sources[order] = np.roll(order, 1)
        return sources

    def text(self, case_id: str, slice_index: int, modality: str, target: str) -> str:
        """The instruction written for one (slice, modality or ``"union"``, target): what the model was told."""
        if self.shuffle_seed is not None:
            n_slices = len(self.for_case(case_id))
            slice_index = int(self._sources(case_id, self.rows[modality], self.columns[target], n_slices)[slice_index])
        filters = [("slice_index", "=", slice_index), ("modality", "=", modality), ("target", "=", target)]
        table = self.store.read_case(case_id, ["instruction"], filters)
        if table is None or table.num_rows != 1:
            raise ZeusError(f"expected one instruction for {case_id} slice {slice_index} {modality} {target}")
        return table.column("instruction")[0].as_py()


def instruction_table(manifest: Manifest, config: TrainConfig) -> InstructionTable | None:
    """The instructions a run reads (None for ``--text none`` and the models without text)."""
    if not config.tag:
        return None
    return InstructionTable(manifest, config.tag, shuffle_seed=config.seed if config.text == SHUFFLED else None)
