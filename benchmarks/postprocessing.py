"""What each post-processing step does to a trained run, per class, on its validation and test cases.

For every case of the run's validation fold and test set, the best checkpoint predicts once; then 3-D Dice per
class (on the model slices) of: the raw argmax, the largest 3-D component of every class, and box refinement
of every class after it (``stage2_segment.refine``; one row per box margin, with boxes around all of a class's
pieces on a slice, and one with boxes around its largest piece), and what the run's own decision
(``postprocessing.json``, made on validation only) applies. The test rows show what each step would have done
there, for an ablation table. Also the seconds box refinement takes per case.

    python benchmarks/postprocessing.py RUN [--margins 0,5,10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from shared.cases import CaseCache
from shared.splits import load_splits
from stage2_segment import metrics, postprocess
from stage2_segment.ensemble import load_predictor
from stage2_segment.refine import BoxRefiner
from stage2_segment.runs import RunFolder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--margins", default="5", help="box margins in px, comma-separated")
    args = parser.parse_args()

    predictor = load_predictor(args.run)
    dataset, config = predictor.dataset, predictor.config
    targets = dataset.manifest.targets
    cases = CaseCache(dataset, config.image_size)
    features, instructions = predictor.features(cases), predictor.instructions(dataset)
    base = predictor.box_refiner()
    if base is None:
        raise SystemExit(f"{args.run}: box refinement applies to Zeus runs only")
    refiners = {
        int(m): BoxRefiner(base.label_values, channel=base.model.channel, margin=int(m), device=predictor.device)
        for m in args.margins.split(",")
    }
    splits = load_splits(dataset.name)
    val_ids = predictor.info.val_cases  # an ensemble of folds: every fold's validation cases
    dice: dict[tuple[str, str], list[list[float]]] = {}
    seconds = []
    for split, case_ids in (("val", list(val_ids)), ("test", list(splits.test))):
        for case_id in case_ids:
            cases.prepare([case_id], progress=False)
            probabilities = predictor.predict_case(case_id, cases, features, instructions)
            raw = predictor.raw_label_map(probabilities)
            true, embeddings = cases.label(case_id), features.load(case_id)
            kept = postprocess.apply(raw, targets.values())
            versions = {"raw": raw, "largest component": kept}
            for margin, refiner in refiners.items():
                start = time.perf_counter()
                versions[f"+ box refinement ({margin} px)"] = refiner(kept, embeddings, targets.values())
                seconds.append(time.perf_counter() - start)
                versions[f"+ largest-piece boxes ({margin} px)"] = refiner(kept, embeddings, (), targets.values())
            versions["the run's decision"] = predictor.label_map(probabilities, embeddings)
            for name, labels in versions.items():
                row = [metrics.dice(labels == v, true == v) for v in targets.values()]
                dice.setdefault((split, name), []).append(row)
                print(f"{split:4s} {case_id:16s} {name:28s}", " ".join(f"{d:.3f}" for d in row), flush=True)
    decision = RunFolder(args.run).read_postprocessing()
    print(f"\n{args.run.name}: mean 3-D Dice over cases ({', '.join(targets)}, foreground mean)")
    for (split, name), rows in dice.items():
        means = np.nanmean(np.asarray(rows, float), axis=0)
        print(f"{split:4s} {name:28s}", " ".join(f"{d:.3f}" for d in means), f"| {np.nanmean(means):.3f}")
    print(f"box refinement: {np.mean(seconds):.1f} s per case ({len(targets)} targets, {predictor.device})")
    if decision is not None:
        print(f"run's decision: {decision.steps}")


if __name__ == "__main__":
    main()
