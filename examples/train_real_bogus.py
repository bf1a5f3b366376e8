#!/usr/bin/env python3
"""Build the real/bogus training set from runs made with ``injection.enabled``.

Each run must have a truth (a simulated run, or an external one with a truth catalog): its
DIASources are labelled by :func:`twinkles.validation.dia.real_bogus_examples` (found
injections and DIASources of variable objects real, the others bogus by cause). The set is
written with the features and labels only, as the classifier
(:mod:`twinkles.diffim.reliability`) reads it; then each run in turn is held out, the
classifier grown on the others and scored on it, which says how well it carries to a scene
it has not seen.

Usage::

    python examples/train_real_bogus.py RUN.yaml [RUN.yaml ...] \
        --out lib/twinkles/diffim/data/real_bogus_training.ecsv

The runs used for the packaged set are named in its header; the runs whose metrics are
quoted (the demo, the external scene) must not be among them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack

from twinkles.config import load_run
from twinkles.diffim.realbogus import REAL_BOGUS_FEATURES
from twinkles.diffim.reliability import RealBogusClassifier, RealBogusConfig
from twinkles.sim.truth import Truth
from twinkles.validation.dia import real_bogus_examples

KEPT = (*REAL_BOGUS_FEATURES, "isDipole", "real", "label", "band")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run configurations (runs/<name>.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="the training set (.ecsv)")
    args = parser.parse_args()
    parts = []
    for path in args.runs:
        run = load_run(path)
        if not Truth.exists(run.butler):
            raise SystemExit(f"{path}: the run has no truth; its DIASources cannot be labelled")
        examples = real_bogus_examples(run.butler, Truth.read(run.butler), run.pixel_scale)
        if not np.any(np.char.startswith(np.asarray(examples["label"], str), "injected")):
            raise SystemExit(f"{path}: no injections; run it with injection.enabled: true")
        table = examples[list(KEPT)]
        for name in REAL_BOGUS_FEATURES:
            # single precision is more than the features' own noise, and halves the file
            table[name] = np.asarray(table[name], np.float32)
        table["scene"] = np.full(
            len(table), run.config.name, dtype=f"U{max(len(run.config.name), 1)}"
        )
        parts.append(table)
        labels, counts = np.unique(np.asarray(table["label"], str), return_counts=True)
        print(
            f"{run.config.name}: "
            + ", ".join(f"{n} {k}" for k, n in zip(labels, counts, strict=True))
        )
    training = vstack(parts, metadata_conflicts="silent")
    training.meta = {"scenes": [p.config.name for p in map(load_run, args.runs)]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp.ecsv")
    training.write(tmp, format="ascii.ecsv", overwrite=True)
    tmp.replace(args.out)
    print(f"wrote {len(training)} DIASources to {args.out}")

    cut = RealBogusConfig().min_reliability
    scenes = sorted(set(training["scene"].tolist()))
    for held_out in scenes if len(scenes) > 1 else []:
        test = np.asarray(training["scene"] == held_out)
        model = RealBogusClassifier().fit(training[~test], training["real"][~test])
        part: Table = training[test]
        score = model.score(part)
        real = np.asarray(part["real"], bool)
        print(
            f"held out {held_out}: real kept {np.mean(score[real] >= cut):.3f}, "
            f"bogus left {int(np.sum(score[~real] >= cut))} of {int(np.sum(~real))} "
            f"(cut {cut:g})"
        )


if __name__ == "__main__":
    main()
