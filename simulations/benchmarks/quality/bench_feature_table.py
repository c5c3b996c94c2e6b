"""Cost of item features on the cohort engine: one chunk of one-user devices (user-level DP recipe:
one SGD step, each update clipped) at ML-1M shapes, featureless, featured with the catalogue's
feature table as a count-matrix product (the default), and featured with the (N, S, D) gather.

    python -m simulations.benchmarks.quality.bench_feature_table [--users 128] [--reps 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

import common.model.models
from common.model.models import ModelConfig, build_model
from common.training.cohort import LocalRecipe, cohort_update

ITEMS, FEATURES, SLOTS, LENGTH = 3416, 36, 6, 50  # ML-1M: 3,416 items; 18 genres + 17 year buckets (+ "none")


def seconds_per_chunk(model, inputs, targets, recipe, reps: int) -> float:
    torch.manual_seed(0)
    cohort_update(model, inputs[:8], targets[:8], recipe)  # warm-up
    start = time.perf_counter()
    for _ in range(reps):
        torch.manual_seed(0)
        cohort_update(model, inputs, targets, recipe)
    return (time.perf_counter() - start) / reps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=128, help="devices per chunk (cohort-chunk)")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    index = torch.zeros(ITEMS + 1, SLOTS, dtype=torch.long)
    for row in range(1, ITEMS + 1):  # 1-4 features per item, like genres + a year bucket
        count = rng.integers(1, 5)
        index[row, :count] = torch.as_tensor(rng.choice(FEATURES, count, replace=False) + 1)
    inputs = torch.randint(1, ITEMS + 1, (args.users, 1, LENGTH))
    targets = torch.randint(1, ITEMS + 1, (args.users, 1, LENGTH))
    recipe = LocalRecipe(1, "sgd", 1.0, clip=1.0)
    config = ModelConfig("sasrec", ITEMS, max_len=LENGTH, emb_dim=64, num_layers=2, dropout=0.2)
    torch.manual_seed(0)
    plain = seconds_per_chunk(build_model(config), inputs, targets, recipe, args.reps)
    featured = build_model(dataclasses.replace(config, num_features=FEATURES, feature_slots=SLOTS))
    featured.set_item_features(index)
    counts = seconds_per_chunk(featured, inputs, targets, recipe, args.reps)
    fits = common.model.models.count_matrix_fits
    common.model.models.count_matrix_fits = lambda items, features: False  # the gather, as before
    try:
        gather = seconds_per_chunk(featured, inputs, targets, recipe, args.reps)
    finally:
        common.model.models.count_matrix_fits = fits
    print(f"{args.users} devices per chunk, one thread: featureless {plain:.2f} s")
    print(f"  featured, count matrix: {counts:.2f} s ({counts / plain:.2f}x)")
    print(f"  featured, gather:       {gather:.2f} s ({gather / plain:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
