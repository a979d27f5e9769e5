"""Benchmark data preparation on the demo data: cases/s and peak memory, cold and warm.

Each phase runs in its own process so its peak resident memory is its own.

    python benchmarks/prepare_data.py [--cases 12] [--slices 16] [--workers 1]
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


def run_phase(workers: int) -> dict:
    from shared.cases import CaseCache
    from shared.manifest import resolve_dataset

    cache = CaseCache(resolve_dataset("demo"))
    start = time.perf_counter()
    summary = cache.prepare(workers=workers, progress=False)
    seconds = time.perf_counter() - start
    peak_kib = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    )
    n = len(summary.built) + len(summary.skipped)
    return {
        "built": len(summary.built),
        "skipped": len(summary.skipped),
        "seconds": round(seconds, 3),
        "cases_per_s": round(n / seconds, 2),
        "peak_rss_mib": round(peak_kib / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--phase", choices=["cold", "warm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args.workers)))
        return

    from shared.demo import DemoConfig, write_demo

    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "ZEUS_HOME": home}
        write_demo(Path(home) / "demo", DemoConfig(cases=args.cases, slices=args.slices), progress=False)
        print(f"demo data: {args.cases} cases x 3 modalities x {args.slices} slices of 128x128, workers={args.workers}")
        for phase in ("cold", "warm"):
            out = subprocess.run(
                [sys.executable, __file__, "--phase", phase, "--workers", str(args.workers)],
                env=env,
                check=True,
                capture_output=True,
                encoding="utf-8",
            ).stdout
            result = json.loads(out.strip().splitlines()[-1])
            print(
                f"{phase:5s}: {result['built']:3d} built, {result['skipped']:3d} skipped, {result['seconds']:7.3f} s, "
                f"{result['cases_per_s']:8.2f} cases/s, peak RSS {result['peak_rss_mib']:.0f} MiB"
            )


if __name__ == "__main__":
    main()
