"""Benchmark stage 1 on the demo data (CPU).

1. cold run: time, requests/s, model calls (default: the offline backends, SmolLM2 instructing);
2. warm rerun: time as a fraction of cold (target <= 5 %) and model calls (target 0);
3. embedding throughput: our embedder vs sentence-transformers' own ``encode`` on the same texts (>= 90 %);
4. peak memory with 1x and 4x the cases (template backend): it should stay flat;
5. the offline describer on one core: ms per image (body, candidate regions, matching every target; target
   <= 50 ms), on the demo or on any prepared dataset (``--describe-dataset``).

Each run is a separate process, so peak RSS is its own.

    python benchmarks/instructions.py [--cases 6] [--backend offline|template] [--skip-memory]
    python benchmarks/instructions.py --only-describe --describe-dataset ../shared/data/chaos_mr_t2spir_dev
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_run(backend: str) -> dict:
    from shared.instructions import PRESETS
    from shared.manifest import resolve_dataset
    from stage1_instruct.config import Stage1Config
    from stage1_instruct.runners import run_local

    preset = PRESETS[backend]
    config = Stage1Config(preset.describe, preset.instruct, preset.embed)
    report = run_local(resolve_dataset("demo"), config, progress=False)
    s = report.stats
    return {
        "seconds": report.seconds,
        "requests": s.requests,
        "cached": s.cached,
        "model_calls": s.model_calls,
        "described": s.described,
        "instructed": s.instructed,
        "embedded": s.embedded,
        "peak_mib": _peak_mib(),
    }


def phase_embed(backend: str) -> dict:
    from sentence_transformers import SentenceTransformer

    from shared.instructions import PRESETS, InstructionStore
    from stage1_instruct.embed.sentence_transformers_backend import SentenceTransformersEmbedder
    from stage1_instruct.offline_models import minilm_dir

    table = InstructionStore.of("demo", PRESETS[backend].tag).read(columns=["instruction"])
    texts = (table.column("instruction").to_pylist() * 4)[:2048]
    ours = SentenceTransformersEmbedder()
    reference = SentenceTransformer(str(minilm_dir()))
    ours.embed(texts[:64]), reference.encode(texts[:64])  # warm up both
    timings = {}
    for name, fn in (
        ("zeus", lambda: ours.embed(texts)),
        ("sentence-transformers", lambda: reference.encode(texts, batch_size=64, normalize_embeddings=True)),
    ):
        best = min(_timed(fn) for _ in range(3))
        timings[name] = len(texts) / best
    return {"texts": len(texts), "texts_per_s": timings}


def phase_describe(dataset: str) -> dict:
    """Describe every prepared slice x modality of the dataset for all its targets, one image at a time."""
    import numpy as np

    from shared.cases import CaseCache
    from shared.manifest import resolve_dataset
    from stage1_instruct.describe import DescribeItem
    from stage1_instruct.describe.image_facts import ImageFactsDescriber

    ds = resolve_dataset(dataset)
    cases = CaseCache(ds, 256)
    cases.prepare(progress=False, with_labels=False)
    describer = ImageFactsDescriber()
    phrases = {m.name: m.description for m in ds.manifest.modalities}
    timings = []
    for case_id in cases.cached_case_ids():
        case = cases.load(case_id, with_label=False)
        for c, modality in enumerate(ds.manifest.modality_names):
            for z in range(case.image.shape[1]):
                items = [
                    DescribeItem(case.image[c, z], case.meta.transform.resized, modality, phrases[modality], t, 0.5)
                    for t in ds.manifest.targets
                ]
                timings.append(_timed(lambda items=items: describer.describe(items)))
    ms = 1000 * np.asarray(timings)
    return {
        "images": len(ms),
        "targets": len(ds.manifest.targets),
        "mean_ms": ms.mean(),
        "p95_ms": np.percentile(ms, 95),
    }


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _subprocess(phase: str, backend: str, home: str, *extra: str, env: dict | None = None) -> dict:
    env = {**os.environ, "ZEUS_HOME": home, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    out = subprocess.run(
        [sys.executable, __file__, "--phase", phase, "--backend", backend, *extra],
        env=env,
        check=True,
        capture_output=True,
        encoding="utf-8",
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _demo(home: str, cases: int) -> None:
    from shared.demo import DemoConfig, write_demo

    write_demo(Path(home) / "demo", DemoConfig(cases=cases), progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--backend", default="offline", choices=["offline", "template"])
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--only-describe", action="store_true", help="only the describer timing (5.)")
    parser.add_argument("--describe-dataset", help="a prepared dataset to time the describer on (default: demo)")
    parser.add_argument("--phase", choices=["run", "embed", "describe"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phases = {"run": phase_run, "embed": phase_embed}
        print(
            json.dumps(
                phase_describe(args.describe_dataset) if args.phase == "describe" else phases[args.phase](args.backend)
            )
        )
        return
    if args.only_describe:
        _describe_timing(args)
        return

    with tempfile.TemporaryDirectory() as home:
        _demo(home, args.cases)
        cold = _subprocess("run", args.backend, home)
        warm = _subprocess("run", args.backend, home)
        print(f"demo: {args.cases} cases x 16 slices x 3 modalities x 4 targets (+ union), backend={args.backend}")
        print(
            f"cold : {cold['seconds']:7.1f} s, {cold['requests'] / cold['seconds']:7.1f} requests/s, "
            f"{cold['requests']} requests, model calls: {cold['described']} describe, {cold['instructed']} LLM, "
            f"{cold['embedded']} embed; peak RSS {cold['peak_mib']:.0f} MiB"
        )
        print(
            f"warm : {warm['seconds']:7.2f} s = {100 * warm['seconds'] / cold['seconds']:.1f} % of cold, "
            f"{warm['cached']}/{warm['requests']} cached, {warm['model_calls']} model calls"
        )
        embed = _subprocess("embed", args.backend, home)
        rates = embed["texts_per_s"]
        print(
            f"embed: {rates['zeus']:.0f} texts/s vs sentence-transformers encode {rates['sentence-transformers']:.0f} "
            f"texts/s on {embed['texts']} texts = {100 * rates['zeus'] / rates['sentence-transformers']:.0f} %"
        )
    _describe_timing(args)
    if args.skip_memory:
        return
    for cases in (args.cases, 4 * args.cases):
        with tempfile.TemporaryDirectory() as home:
            _demo(home, cases)
            run = _subprocess("run", "template", home)
            print(f"memory: {cases:3d} cases (template) -> peak RSS {run['peak_mib']:.0f} MiB, {run['seconds']:.1f} s")


def _describe_timing(args) -> None:
    one_core = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as scratch:
        home = os.environ.get("ZEUS_HOME", scratch) if args.describe_dataset else scratch
        if not args.describe_dataset:
            _demo(home, args.cases)
        extra = ["--describe-dataset", args.describe_dataset or "demo"]
        r = _subprocess("describe", args.backend, home, *extra, env=one_core)
    print(
        f"describe (image-facts, 1 core): {r['mean_ms']:.1f} ms per image (p95 {r['p95_ms']:.1f} ms), "
        f"{r['images']} images x {r['targets']} targets"
    )


if __name__ == "__main__":
    main()
