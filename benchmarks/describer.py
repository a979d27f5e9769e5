"""How often the offline describer's matched region is the organ it names, measured against a dataset's labels.

Stage 1 never reads a label; this benchmark does, to grade the ``image-facts`` describer (which region it
calls a fair or good fit for each target) on a prepared, labelled dataset. Per target, over the slices with
body tissue:

- ``inside``: of the slices where it matches a region, the share whose region lies mostly (>= 50 % of its
  pixels) inside the target's label;
- ``of them good fits``: the same share among the matches with a good fit (``GOOD_FIT``: "fits ... well");
- ``found``: of the slices that hold the target, the share that get such an inside match;
- ``false``: of the slices without the target, the share that still get a match (a region the text then
  describes as the target);
- ``matches mostly elsewhere``: where a match lies mostly outside the target, what it covers instead
  (another target's label, or unlabelled tissue).

    python benchmarks/describer.py ../shared/data/chaos_mr_t2spir_dev
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict

import numpy as np


def grade(dataset: str) -> dict[str, Counter]:
    from shared.cases import CaseCache
    from shared.manifest import resolve_dataset
    from stage1_instruct.describe.image_facts import FAIR_FIT, GOOD_FIT, match_region
    from stage1_instruct.describe.regions import measure
    from stage1_instruct.generate import body_levels
    from stage1_instruct.knowledge import knowledge_for

    ds = resolve_dataset(dataset)
    cases = CaseCache(ds, 256)
    cases.prepare(progress=False)
    targets = ds.manifest.targets
    names = {v: t for t, v in targets.items()}
    known = {t: knowledge_for(t) for t in targets}
    counts: dict[str, Counter] = defaultdict(Counter)
    for case_id in cases.cached_case_ids():
        case = cases.load(case_id)
        if case.label is None:
            raise SystemExit(f"{case_id} has no label: this benchmark grades the describer against labels")
        h, w = case.meta.transform.resized
        for c, modality in enumerate(ds.manifest.modality_names):
            for z, level in enumerate(body_levels(case.image[c], (h, w))):
                if level is None:
                    continue
                label = case.label[z, :h, :w]
                regions = measure(np.ascontiguousarray(case.image[c, z, :h, :w]))
                for target, value in targets.items():
                    present = bool((label == value).any())
                    counts[target]["slices with target" if present else "slices without target"] += 1
                    region, fit = match_region(regions, known[target], modality)
                    if region is None or fit < FAIR_FIT:
                        continue
                    pixels = label[regions.components == regions.candidates.index(region) + 1]
                    share = np.bincount(pixels, minlength=max(targets.values()) + 1) / max(pixels.size, 1)
                    counts[target]["matches"] += 1
                    counts[target]["false"] += not present
                    counts[target]["good"] += fit >= GOOD_FIT
                    if share[value] >= 0.5:
                        counts[target]["inside"] += 1
                        counts[target]["good inside"] += fit >= GOOD_FIT
                        counts[target]["found"] += present
                    else:
                        counts[target][f"wrong: {names.get(int(np.argmax(share)), 'unlabelled tissue')}"] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="a labelled dataset: built-in manifest name, manifest .json or folder")
    counts = grade(parser.parse_args().dataset)
    print("| target | inside | of them good fits | found | false | matches mostly elsewhere |")
    print("|---|---|---|---|---|---|")
    for target, c in counts.items():
        wrong = ", ".join(f"{k[7:]} {v}" for k, v in sorted(c.items()) if k.startswith("wrong: "))
        print(
            f"| {target} | {c['inside'] / max(c['matches'], 1):.0%} of {c['matches']} "
            f"| {c['good inside'] / max(c['good'], 1):.0%} of {c['good']} "
            f"| {c['found'] / max(c['slices with target'], 1):.0%} of {c['slices with target']} "
            f"| {c['false'] / max(c['slices without target'], 1):.0%} of {c['slices without target']} | {wrong} |"
        )


if __name__ == "__main__":
    main()
