"""The text matters: the model reads it, can learn a task only the text solves, and `zeus ablate` measures it
against class tokens and a shuffled-text control."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch

from shared.cases import CaseCache
from shared.errors import ZeusError
from shared.instructions import PRESETS, InstructionStore
from shared.splits import ensure_splits
from shared.workspace import instructions_dir
from stage2_segment.config import TrainConfig
from stage2_segment.features import FeatureCache
from stage2_segment.instructions import InstructionTable, instruction_table
from stage2_segment.losses import union_loss
from stage2_segment.modeling.encoders import FrozenImageEncoder
from stage2_segment.modeling.segmenter import SegmenterConfig, ZeusSegmenter
from stage2_segment.runs import RunFolder
from tests.factories import with_cell
from zeus import ablation
from zeus.ablation import (
    FOREGROUND,
    AblationPlan,
    bootstrap_difference,
    check_folds,
    compare,
    conclusion,
    run_ablation,
)

TEMPLATE = PRESETS["template"].tag


def test_shuffled_instructions_keep_the_class_and_take_another_slices_text(stage2_dataset):
    manifest = stage2_dataset.manifest
    plain = InstructionTable(manifest, TEMPLATE)
    shuffled = InstructionTable(manifest, TEMPLATE, shuffle_seed=0)
    a, b = plain.for_case("demo_001"), shuffled.for_case("demo_001")
    assert a.shape == b.shape and a.shape[0] == 3
    for m, modality in enumerate((*manifest.modality_names, "union")):
        for t, target in enumerate(manifest.targets):
            sources = shuffled._sources("demo_001", m, t, 3)
            assert sorted(sources) == [0, 1, 2] and all(sources != np.arange(3))  # a derangement
            np.testing.assert_array_equal(b[:, m, t], a[sources, m, t])
            told = shuffled.text("demo_001", 1, modality, target)
            assert told == plain.text("demo_001", int(sources[1]), modality, target)
    np.testing.assert_array_equal(InstructionTable(manifest, TEMPLATE, shuffle_seed=0).for_case("demo_001"), b)
    config = TrainConfig(text="shuffled", instructions_tag=TEMPLATE, seed=3)
    assert instruction_table(manifest, config).shuffle_seed == 3
    assert instruction_table(manifest, TrainConfig(text="template")).shuffle_seed is None


def _wider_embeddings(table):
    import pyarrow as pa

    vectors = np.asarray(table.column("embedding").to_pylist(), np.float32)
    wider = np.concatenate([vectors, vectors[:, :1]], axis=1)
    column = pa.FixedSizeListArray.from_arrays(pa.array(wider.ravel(), pa.float32()), wider.shape[1])
    return table.set_column(table.schema.get_field_index("embedding"), "embedding", column)


TAMPERED_SHARDS = {
    "a slice far beyond the case": (lambda t: with_cell(t, "slice_index", 0, 2**30), "slice_index 0..1073741824"),
    "a negative slice": (lambda t: with_cell(t, "slice_index", 0, -1), "slice_index -1.."),
    "an unknown modality": (lambda t: with_cell(t, "modality", 0, "../evil"), "modality '../evil' is not one of"),
    "an unknown target": (lambda t: with_cell(t, "target", 5, "heart"), "target 'heart' is not one of"),
    "an infinite embedding": (
        lambda t: with_cell(t, "embedding", 3, [float("inf")] * t.schema.field("embedding").type.list_size),
        "1 embedding(s) with NaN or infinite values",
    ),
    "embeddings of another size": (_wider_embeddings, "embeddings of 385 numbers, the store's have 384"),
}


@pytest.mark.parametrize("tamper", sorted(TAMPERED_SHARDS))
def test_a_tampered_shard_is_refused_naming_the_file(stage2_dataset, tmp_path, tamper):
    import pyarrow.parquet as pq

    manifest = stage2_dataset.manifest
    store = InstructionStore(tmp_path / "store")
    shutil.copytree(InstructionStore.of(manifest.name, TEMPLATE).folder, store.folder)
    case = store.case_ids()[-1]  # not the first shard, which sets the store's embedding size
    edit, message = TAMPERED_SHARDS[tamper]
    pq.write_table(edit(pq.read_table(store.shard(case))), store.shard(case))
    with pytest.raises(ZeusError, match=re.escape(message)) as refused:
        InstructionTable(manifest, TEMPLATE, store=store).for_case(case)
    assert f"{store.shard(case)}:" in str(refused.value) and "rerun `zeus instructions" in str(refused.value)
    assert ("delete the shard" in str(refused.value)) == (tamper == "embeddings of another size")
    assert InstructionTable(manifest, TEMPLATE, store=store).for_case(store.case_ids()[0]).shape[0] == 3


def test_with_fixed_weights_another_instruction_gives_other_logits():
    torch.manual_seed(0)
    model = ZeusSegmenter(SegmenterConfig(fusion="late", num_modalities=1, num_targets=1)).eval()
    images = torch.randn(1, 1, 256, 64, 64)
    with torch.no_grad():
        a = model(images, torch.randn(1, 2, 1, 384))
        b = model(images, torch.randn(1, 2, 1, 384))
    assert (a[:, 1] - b[:, 1]).abs().max() > 0.05
    torch.testing.assert_close(a[:, 0], b[:, 0])  # the background logit does not read the text


def _two_blobs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image embedding with two identical blobs (left, right) and the 256 px mask of each."""
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    left = ((xx - 18) ** 2 + (yy - 32) ** 2 <= 64).float()
    right = ((xx - 46) ** 2 + (yy - 32) ** 2 <= 64).float()
    feature = torch.randn(256, 1, 1, generator=torch.Generator().manual_seed(1))
    image = feature * (left + right) + 0.1 * torch.randn(256, 64, 64, generator=torch.Generator().manual_seed(2))
    up = lambda m: m.repeat_interleave(4, 0).repeat_interleave(4, 1).long()  # noqa: E731
    return image, up(left), up(right)


def _dice(logits: torch.Tensor, mask: torch.Tensor) -> float:
    predicted = logits.argmax(0) == 1
    return float(2 * (predicted & (mask == 1)).sum() / (predicted.sum() + mask.sum()))


@pytest.mark.slow
def test_a_task_only_the_text_can_solve_is_learned():
    """The image is the same for both samples; only the instruction says which blob to segment."""
    torch.manual_seed(0)
    image, left, right = _two_blobs()
    texts = torch.nn.functional.normalize(torch.randn(2, 384), dim=1)  # "the left blob", "the right blob"
    images = image.expand(2, 1, 256, 64, 64)
    text = texts[:, None, None].expand(2, 2, 1, 384)  # (modality + union) x 1 target
    labels = torch.stack([left, right])
    model = ZeusSegmenter(SegmenterConfig(fusion="late", num_modalities=1, num_targets=1)).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(30):
        loss = union_loss(model(images, text), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(images, text)
    assert _dice(logits[0], left) > 0.8 and _dice(logits[1], right) > 0.8
    assert _dice(logits[0], right) < 0.2 and _dice(logits[1], left) < 0.2  # the text, not the image, decides


def test_the_bootstrap_interval_is_centred_and_covers_the_spread():
    same = bootstrap_difference(np.full((4, 3), 0.1))
    assert same.mean == pytest.approx(0.1) and same.low == pytest.approx(0.1) and same.high == pytest.approx(0.1)
    assert same.verdict == "better"
    rng = np.random.default_rng(0)
    noisy = bootstrap_difference(rng.normal(0.0, 0.05, (20, 3)))
    assert noisy.low < noisy.mean < noisy.high and noisy.verdict == "no difference shown"
    worse = bootstrap_difference(np.array([[-0.2, -0.1], [-0.15, np.nan]]))  # NaN: a class undefined in a case
    assert worse.high < 0 and worse.verdict == "worse" and worse.mean == pytest.approx(-0.15)


def test_an_ablation_without_its_stores_is_refused_before_training(stage2_dataset):
    plan = AblationPlan(stage2_dataset.name, TrainConfig(epochs=1), ("instructions", "none"), (0,))
    with pytest.raises(ZeusError, match=r"zeus instructions .* --backend offline"):
        run_ablation(stage2_dataset, plan, progress=False)
    assert not RunFolder.of(stage2_dataset.name, plan.run_name("none", 0)).path.exists()


@pytest.mark.slow
def test_zeus_ablate_trains_every_mode_per_seed_and_the_report_compares_them(stage2_dataset, tmp_path):
    # The offline store here is a copy of the template store: the point is the plumbing, not the text.
    store = instructions_dir(stage2_dataset.name)
    shutil.copytree(store / TEMPLATE, store / PRESETS["offline"].tag)
    base = TrainConfig(decoder="joint", epochs=1, slices_per_epoch=2, warmup_steps=1)
    plan = AblationPlan(stage2_dataset.name, base, seeds=(0, 1))
    folders = run_ablation(stage2_dataset, plan, progress=False)
    assert len(folders) == 8 and all(RunFolder(f).evaluation().summary_json.is_file() for f in folders)
    configs = [RunFolder(f).read_info().train for f in folders]
    assert [(c.text, c.seed) for c in configs] == [(t, s) for s in (0, 1) for t in plan.texts]
    assert len({(c.epochs, c.fold, c.decoder, c.slices_per_epoch) for c in configs}) == 1
    # A rerun finds everything done and trains nothing.
    mtimes = [RunFolder(f).log_csv.stat().st_mtime_ns for f in folders]
    run_ablation(stage2_dataset, plan, progress=False)
    assert [RunFolder(f).log_csv.stat().st_mtime_ns for f in folders] == mtimes

    comparison = compare(plan, list(stage2_dataset.manifest.targets))
    assert comparison.cases == ("demo_003",) and not comparison.missing
    assert set(comparison.paired) == {
        ("instructions", "none"),
        ("template", "none"),
        ("shuffled", "none"),
        ("instructions", "shuffled"),
        ("template", "shuffled"),
    }
    assert len(comparison.dice["none"][FOREGROUND]) == 2  # one value per seed
    assert "no difference shown" in conclusion(comparison) or "beats" in conclusion(comparison)

    from zeus.report.build import build_report

    markdown = (build_report(stage2_dataset.name, tmp_path / "report").parent / "report.md").read_text(encoding="utf-8")
    section = markdown.split("## Does the text help?")[1].split("\n## ")[0]
    assert "instructions − none" in section and "shuffled" in section and "95 % interval" in section
    assert "±" in section and "ablation__" not in markdown.split("## Does the text help?")[0]
    carried = markdown.split("## What the instructions carry")[1].split("\n## ")[0]
    assert f"`{TEMPLATE}`" in carried and re.search(r"\| template \d+ \|", carried)
    assert InstructionStore.of(stage2_dataset.name, TEMPLATE).case_ids()


def test_a_cross_validation_plan_trains_every_fold_and_compares_one_ensemble_per_text_and_seed():
    plan = AblationPlan("d", TrainConfig(decoder="joint"), ("template", "none"), (0, 1), folds=(0, 1, 2))
    assert plan.cross_validation and len(plan.trainings()) == 2 * 2 * 3
    assert plan.trainings()[:3] == [
        ("template", 0, k, f"ablation__late-joint__text-template__fold{k}__seed0") for k in range(3)
    ]
    assert plan.runs()[0] == ("template", 0, "ablation__late-joint__text-template__cv__seed0")
    assert plan.config("none", 1, 2).fold == 2 and plan.config("none", 1, 2).run_name == plan.run_name("none", 1, 2)
    assert plan.run_names() == {n for *_, n in plan.trainings()} | {n for *_, n in plan.runs()}
    assert AblationPlan.from_json(plan.to_json()) == plan
    # a plan written before cross-validation ablations reads as a single-fold one
    single = AblationPlan.from_json({k: v for k, v in plan.to_json().items() if k != "folds"})
    assert not single.cross_validation and [n for *_, n in single.runs()] == [n for *_, n in single.trainings()]
    with pytest.raises(ZeusError, match="2 or more folds"):
        AblationPlan("d", TrainConfig(), ("template", "none"), (0,), folds=(0,))


def test_a_cross_validation_plan_for_another_split_is_refused(stage2_dataset):
    plan = AblationPlan(stage2_dataset.name, TrainConfig(), ("template", "none"), (0,), folds=(0, 1, 2, 3))
    with pytest.raises(ZeusError, match="run `zeus data prepare zeusdemo` first"):
        check_folds(stage2_dataset.name, plan)
    ensure_splits(stage2_dataset.name, CaseCache(stage2_dataset, 256).cached_case_ids(), folds=3, test_fraction=0)
    with pytest.raises(ZeusError, match=r"folds \[0, 1, 2, 3\], the split 3"):
        check_folds(stage2_dataset.name, plan)


@pytest.mark.slow
def test_a_cross_validation_ablation_trains_folds_in_parallel_and_compares_every_case_out_of_fold(
    stage2_dataset, monkeypatch
):
    name = stage2_dataset.name
    cases = CaseCache(stage2_dataset, 256).cached_case_ids()
    ensure_splits(name, cases, folds=3, test_fraction=0, overwrite=True)  # 3 folds of 2 training / 1 validation case
    # A third augmented copy, not cached yet: computed once, here, before the parallel runs start (each would
    # compute the copies it misses).
    base = TrainConfig(decoder="joint", epochs=1, slices_per_epoch=2, warmup_steps=1, augment_copies=3)
    plan = AblationPlan(name, base, ("template", "none"), (0,), folds=(0, 1, 2))
    features = FeatureCache(CaseCache(stage2_dataset, 256), FrozenImageEncoder())
    cached_at_start, run_all = [], ablation._run_all

    def run_all_checked(tasks, names, jobs, progress):
        cached_at_start.append(all(features.is_current(case, 3) for case in cases))
        run_all(tasks, names, jobs, progress)

    monkeypatch.setattr(ablation, "_run_all", run_all_checked)
    assert not any(features.is_current(case, 3) for case in cases)
    folders = run_ablation(stage2_dataset, plan, progress=False, jobs=2)
    assert cached_at_start == [True, True]  # the trainings, then the ensembles

    assert [f.name for f in folders] == [plan.ensemble_name(t, 0) for t in plan.texts]
    for text, folder in zip(plan.texts, folders, strict=True):
        info = RunFolder(folder).read_info()
        assert info.ensemble == [plan.run_name(text, 0, k) for k in range(3)]
        assert sorted(info.val_cases) == sorted(cases)  # each case validated by the fold that did not train on it
    members = [RunFolder.of(name, n).read_info().train for *_, n in plan.trainings()]
    assert [(c.text, c.fold) for c in members] == [(t, k) for t in plan.texts for k in range(3)]
    comparison = compare(plan, list(stage2_dataset.manifest.targets))
    assert comparison.split == "val" and comparison.cases == tuple(sorted(cases)) and not comparison.missing
    assert set(comparison.paired) == {("template", "none")}
    assert "3 case(s) predicted out of fold x 1 seed(s)" in conclusion(comparison)
    # A rerun finds every fold and ensemble done.
    summaries = [RunFolder(f).evaluation("val").summary_json for f in folders]
    mtimes = [p.stat().st_mtime_ns for p in summaries]
    run_ablation(stage2_dataset, plan, progress=False, jobs=2)
    assert [p.stat().st_mtime_ns for p in summaries] == mtimes


def test_no_text_reads_no_store_whatever_the_tag():
    assert TrainConfig(text="none", instructions_tag=TEMPLATE).tag is None
    assert TrainConfig(text="shuffled", instructions_tag=TEMPLATE).tag == TEMPLATE
    assert TrainConfig(text="shuffled").tag == PRESETS["offline"].tag
