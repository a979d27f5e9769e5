"""Time ``make demo`` end to end in a fresh workspace: the target is at most 15 minutes on 2 CPU cores.

Installation (``make setup``) runs first and is not timed. Prints the wall time and the peak resident memory
of the largest process. The report lands in ``reports/demo/`` as with ``make demo``.
"""

from __future__ import annotations

import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_MINUTES = 15


def main() -> None:
    subprocess.run(["make", "setup"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory(prefix="zeus-demo-") as home:
        start = time.perf_counter()
        subprocess.run(["make", "demo"], cwd=ROOT, env={**os.environ, "ZEUS_HOME": home}, check=True)
        seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    verdict = "within" if seconds <= TARGET_MINUTES * 60 else "OVER"
    minutes = seconds / 60
    print(
        f"make demo (fresh workspace): {seconds:.0f} s = {minutes:.1f} min, {verdict} the {TARGET_MINUTES}-min target"
    )
    print(f"peak resident memory of one process: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
