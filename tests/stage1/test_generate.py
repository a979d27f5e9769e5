"""Stage 1 end to end on a tiny dataset with the template instructor and the real MiniLM embedder."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from shared.cases import CaseCache, CaseMeta, PreprocessedCase
from shared.geometry import Geometry
from shared.instructions import embeddings
from shared.preprocess import SliceTransform
from stage1_instruct.backends import build_backends
from stage1_instruct.config import Stage1Config
from stage1_instruct.generate import InstructionGenerator
from stage1_instruct.runners import Shard, instruction_store, run_local

TEMPLATE = Stage1Config(instruct="template", image_size=64)


class Counting:
    """Wraps a backend, counting the inputs it is asked for (and optionally failing after some calls)."""

    def __init__(self, inner, method: str, fail_after: int | None = None):
        self.inner, self.method, self.fail_after = inner, method, fail_after
        self.model_id = inner.model_id
        self.inputs = 0
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, items):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("killed")
        self.inputs += len(items)
        return getattr(self.inner, self.method)(items)


def _counting_models(config, describe_fail_after=None):
    models = build_backends(config)
    describer = Counting(models.describer, "describe", describe_fail_after)
    instructor = Counting(models.instructor, "instruct")
    embedder = Counting(models.embedder, "embed")
    describer.describe, instructor.instruct, embedder.embed = describer.run, instructor.run, embedder.run
    models.describer, models.instructor, models.embedder = describer, instructor, embedder
    return models


def _run(dataset, config=TEMPLATE, models=None, case_ids=None):
    cache = CaseCache(dataset, config.image_size)
    ids = case_ids or ["demo_001", "demo_002"]
    cache.prepare(ids, with_labels=False, progress=False)
    generator = InstructionGenerator(
        dataset, config, models or build_backends(config), instruction_store(dataset, config)
    )
    return [generator.run_case(cache.load(c, with_label=False)) for c in ids]


def test_rows_cover_every_slice_modality_target_and_union(tiny_dataset):
    report = run_local(tiny_dataset, TEMPLATE, progress=False)
    table = instruction_store(tiny_dataset, TEMPLATE).read()
    assert report.stats.requests == len(table) == 2 * 4 * (3 * 4 + 4)
    rows = table.to_pylist()
    union = [r for r in rows if r["modality"] == "union"]
    assert len(union) == 2 * 4 * 4
    assert {r["modality"] for r in rows} == {"T1_in", "T1_out", "T2", "union"}
    assert all(r["instruction"] and r["target"] in r["instruction"] for r in rows)
    assert {r["label_value"] for r in rows if r["target"] == "spleen"} == {4}
    vectors = embeddings(table)
    assert vectors.shape == (len(rows), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Instructions differ by target and by modality within a slice; so do their embeddings.
    one_slice = [r for r in rows if r["case_id"] == "demo_001" and r["slice_index"] == 2]
    assert len({r["instruction"] for r in one_slice}) == len(one_slice)
    by = {
        (r["modality"], r["target"]): i
        for i, r in enumerate(rows)
        if r["case_id"] == "demo_001" and r["slice_index"] == 2
    }
    assert vectors[by["T2", "liver"]] @ vectors[by["T2", "spleen"]] < 0.99
    assert vectors[by["T1_in", "liver"]] @ vectors[by["T2", "liver"]] < 0.999


def test_warm_rerun_makes_no_model_call_and_rewrites_nothing(tiny_dataset):
    run_local(tiny_dataset, TEMPLATE, progress=False)
    store = instruction_store(tiny_dataset, TEMPLATE)
    mtimes = {c: store.shard(c).stat().st_mtime_ns for c in store.case_ids()}
    models = _counting_models(TEMPLATE)
    stats = _run(tiny_dataset, models=models)
    assert all(s.cached == s.requests for s in stats)
    assert models.describer.calls == models.instructor.calls == models.embedder.calls == 0
    assert models.embedder.inner._model is None  # not even loaded (a cached rerun is instant)
    assert {c: store.shard(c).stat().st_mtime_ns for c in store.case_ids()} == mtimes


def test_resume_after_a_kill_generates_only_the_missing_case(tiny_dataset):
    # The describer dies on its first call of the second case (one call per case at this batch size).
    config = Stage1Config(instruct="template", image_size=64, batch_size=1000)
    killed = _counting_models(config, describe_fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_dataset, config, killed)
    store = instruction_store(tiny_dataset, config)
    assert store.case_ids() == ["demo_001"]
    first = store.read_case("demo_001")
    models = _counting_models(config)
    stats = _run(tiny_dataset, config, models)
    assert stats[0].cached == stats[0].requests  # the finished case is not regenerated
    assert stats[1].cached == 0 and models.describer.inputs == 48  # 4 slices x 3 modalities x 4 targets
    assert store.read_case("demo_001").equals(first)
    assert store.case_ids() == ["demo_001", "demo_002"]


def test_identical_inputs_are_generated_once(tiny_dataset):
    # A third case with the same images as the first: every request key repeats.
    images = tiny_dataset.root / "imagesTr"
    shutil.copy(images / "demo_001.nii.gz", images / "demo_003.nii.gz")
    shutil.copy(tiny_dataset.root / "labelsTr" / "demo_001.nii.gz", tiny_dataset.root / "labelsTr" / "demo_003.nii.gz")
    (tiny_dataset.root / "dataset.json").unlink()  # list cases from imagesTr
    models = _counting_models(TEMPLATE)
    stats = _run(tiny_dataset, models=models, case_ids=["demo_001", "demo_003"])
    assert stats[0].described == 48 and stats[1].described == 0
    assert stats[1].instructed == 0 and stats[1].embedded == 0
    # and within a case, identical LLM prompts are sent once: fewer prompts than requests
    assert 0 < stats[0].instructed < stats[0].requests
    store = instruction_store(tiny_dataset, TEMPLATE)
    a, b = store.read_case("demo_001"), store.read_case("demo_003")
    assert a.column("instruction").equals(b.column("instruction"))
    assert set(b.column("case_id").to_pylist()) == {"demo_003"}


def test_same_inputs_give_identical_texts_and_embeddings(tiny_dataset, zeus_home, monkeypatch, tmp_path):
    run_local(tiny_dataset, TEMPLATE, progress=False)
    first = instruction_store(tiny_dataset, TEMPLATE).read()
    monkeypatch.setenv("ZEUS_HOME", str(tmp_path / "other_home"))
    run_local(tiny_dataset, TEMPLATE, progress=False)
    second = instruction_store(tiny_dataset, TEMPLATE).read()
    assert first.column("instruction").equals(second.column("instruction"))
    assert first.column("request_key").equals(second.column("request_key"))
    np.testing.assert_array_equal(embeddings(first), embeddings(second))


def test_stage1_never_needs_labels(tiny_dataset, monkeypatch, tmp_path):
    run_local(tiny_dataset, TEMPLATE, progress=False)
    with_labels = instruction_store(tiny_dataset, TEMPLATE).read()
    shutil.rmtree(tiny_dataset.root / "labelsTr")
    monkeypatch.setenv("ZEUS_HOME", str(tmp_path / "fresh_home"))
    run_local(tiny_dataset, TEMPLATE, progress=False)
    without = instruction_store(tiny_dataset, TEMPLATE).read()
    assert with_labels.column("instruction").equals(without.column("instruction"))
    np.testing.assert_array_equal(embeddings(with_labels), embeddings(without))


def test_slices_without_body_get_a_fixed_text_and_no_model_call(tiny_dataset):
    config = TEMPLATE
    models = _counting_models(config)
    generator = InstructionGenerator(tiny_dataset, config, models, instruction_store(tiny_dataset, config))
    image = np.zeros((3, 2, 64, 64), np.float32)
    image[:, 1, 10:50, 10:50] = 0.6  # slice 1 has a body, slice 0 is empty
    grid = Geometry((64, 64, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    meta = CaseMeta(
        "blank", tiny_dataset.name, ("T1_in", "T1_out", "T2"), grid, grid, SliceTransform((64, 64), 64), "x"
    )
    stats = generator.run_case(PreprocessedCase(meta, image, None))
    assert stats.no_body == 16 and models.describer.inputs == 12
    rows = instruction_store(tiny_dataset, config).read_case("blank").to_pylist()
    empty = [r for r in rows if r["slice_index"] == 0]
    assert all(not r["has_body"] for r in empty)
    assert {r["instruction"] for r in empty if r["target"] == "liver"} == {
        "The liver is not in this slice: no body tissue is visible."
    }


def test_shards_split_the_cases_and_together_equal_the_full_run(tiny_dataset, monkeypatch, tmp_path):
    assert Shard.parse("1/2").select(["b", "a", "c"]) == ["b"]
    first = run_local(tiny_dataset, TEMPLATE, shard=Shard(0, 2), progress=False)
    second = run_local(tiny_dataset, TEMPLATE, shard=Shard(1, 2), progress=False)
    assert first.stats.cases == second.stats.cases == 1
    sharded = instruction_store(tiny_dataset, TEMPLATE).read()
    monkeypatch.setenv("ZEUS_HOME", str(tmp_path / "whole"))
    run_local(tiny_dataset, TEMPLATE, progress=False)
    assert instruction_store(tiny_dataset, TEMPLATE).read().column("request_key").equals(sharded.column("request_key"))


class HalfFaithfulLLM:
    """An "LLM" that writes a faithful sentence for the liver and drops every fact for the other targets."""

    model_id = "half-faithful"
    source = "llm"

    def instruct(self, items):
        return [self._liver(i) if i.target == "liver" else f"Segment the {i.target}." for i in items]

    @staticmethod
    def _liver(item):
        d = next(d for _, d in item.descriptions if d.get("visible") != "no")
        visible = "unlikely" if d["visible"].startswith("unlikely") else "likely"
        return f"Segment the liver, {visible} here, {d['level'].split()[0]} third, on the patient's right."


def test_unfaithful_llm_instructions_are_replaced_by_the_template_and_counted(tiny_dataset):
    models = build_backends(TEMPLATE)
    models.instructor = HalfFaithfulLLM()
    stats = _run(tiny_dataset, models=models)
    rows = [r for r in instruction_store(tiny_dataset, TEMPLATE).read().to_pylist() if r["has_body"]]
    sources = {(r["target"] == "liver", r["instruction_source"]) for r in rows}
    assert sources == {(True, "llm"), (False, "template-fallback")}
    fallback = [r for r in rows if r["instruction_source"] == "template-fallback"]
    assert all("visibility:" in r["instruction"] and "third of the body" in r["instruction"] for r in fallback)
    kept, replaced = sum(s.llm_kept for s in stats), sum(s.llm_replaced for s in stats)
    assert kept > 0 and replaced > 0 and kept + replaced == len(rows)  # every request with body is checked


def test_template_rows_record_their_source(tiny_dataset):
    run_local(tiny_dataset, TEMPLATE, progress=False)
    rows = instruction_store(tiny_dataset, TEMPLATE).read().to_pylist()
    assert {r["instruction_source"] for r in rows if r["has_body"]} == {"template"}
