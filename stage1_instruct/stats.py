"""What a store's instructions carry: per target, how many distinct texts, where they came from, and how
their embeddings cluster (within one target vs across targets). A store whose texts are a class token plus
noise shows few distinct texts per target and high within-target similarity."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shared.instructions import embeddings


@dataclass(frozen=True)
class TargetStats:
    target: str
    rows: int  # modality rows on slices with body
    distinct: int  # distinct instruction texts among them
    sources: dict[str, int]  # instruction_source -> rows
    within: float  # mean cosine similarity between different rows of this target
    across: float  # mean cosine similarity to rows of the other targets

    @property
    def sources_text(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.sources.items()))


def store_statistics(table: pa.Table) -> list[TargetStats]:
    """Per target, over the modality rows (not union) of slices with body."""
    rows = table.filter(pc.and_(table["has_body"], pc.not_equal(table["modality"], "union")))
    targets = rows.column("target").to_pylist()
    texts = rows.column("instruction").to_pylist()
    sources = (
        rows.column("instruction_source").to_pylist()
        if "instruction_source" in rows.column_names
        else ["unrecorded"] * len(texts)
    )
    vectors = embeddings(rows)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    labels = np.asarray(targets)
    out = []
    for target in dict.fromkeys(targets):
        picked = np.flatnonzero(labels == target)
        mine = vectors[picked]
        others = vectors[labels != target]
        gram = mine @ mine.T
        n = len(mine)
        within = float((gram.sum() - np.trace(gram)) / (n * (n - 1))) if n > 1 else float("nan")
        across = float((mine @ others.T).mean()) if len(others) else float("nan")
        out.append(
            TargetStats(
                target,
                n,
                len({texts[i] for i in picked}),
                dict(Counter(sources[i] for i in picked)),
                within,
                across,
            )
        )
    return out


def format_statistics(stats: list[TargetStats]) -> str:
    lines = [f"{'target':20s} {'rows':>6s} {'distinct':>8s} {'within':>7s} {'across':>7s}  sources"]
    for s in stats:
        lines.append(f"{s.target:20s} {s.rows:6d} {s.distinct:8d} {s.within:7.3f} {s.across:7.3f}  {s.sources_text}")
    return "\n".join(lines)
