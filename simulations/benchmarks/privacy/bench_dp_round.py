"""Compute of one user-level DP round on the cohort engine against a non-private round (issue 32).

One round = the recipe's users per round (1,000 on ML-1M, real training windows of randomly drawn
users) cut in chunks of `cohort-chunk` as the cohort engine cuts them, each chunk one
`cohort_update` on one thread (what each Ray actor of a simulated SuperNode runs). Three ways,
interleaved in one process, `--reps` rounds each:
- plain: one SGD step, no clipping (`_one_sgd_step`, one batched backward pass);
- vmap-dp: each user's update clipped to C by the exact per-user path (`_stacked`, torch.func vmap);
- ghost-dp: the same clipped sum by ghost clipping (`common.training.ghost_clipping`, what `cohort_update`
  now takes).
Reported: min and median seconds per round, wall and CPU (process time: on a machine shared with
other jobs the CPU time is the steadier measure of compute), the ratios to plain (ghost-dp's goal:
<= 1.3), and the largest difference between the two DP sums of one round without dropout, relative
to their scale. Windows are
built once before timing; only the update's compute is measured.

    FEDSEQREC_DATA_DIR=../shared/data nice -n 10 .venv/bin/python -m simulations.benchmarks.privacy.bench_dp_round \
        --models sasrec gru sasrec-features --reps 5 --out /work/runs/ghost/bench-dp-round.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from common.config import RunConfig, read_toml
from common.data.load import load_sequence_data
from common.recipes import device_recipe
from common.training.cohort import _stacked, cohort_update
from common.training.cohort_clients import user_seeds, user_windows
from common.training.step import model_for

BASE = Path(__file__).resolve().parents[3] / "simulations/configs/ml1m-cohort-dp.toml"
MODELS = {  # what each model name changes in ml1m-cohort-dp.toml
    "sasrec": {},
    "sasrec-original": {"sasrec-block": "original"},
    "gru": {"model": "gru"},
    "lstm": {"model": "lstm"},
    "sasrec-features": {"item-features": "genre,year"},
}


WAYS = ("plain", "vmap-dp", "ghost-dp")


def one_round(model, chunks, recipe, way: str) -> tuple[float, float, dict[str, torch.Tensor]]:
    """Wall and CPU seconds of one round's compute, and its summed update."""
    total = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    start, cpu = time.perf_counter(), time.process_time()
    for inputs, targets, keys in chunks:  # keys: each user's own dropout randomness, as the engine draws it
        result = (
            _stacked(model, inputs, targets, recipe, keys=keys)
            if way == "vmap-dp"
            else cohort_update(model, inputs, targets, recipe, keys=keys)
        )
        for k in total:
            total[k] += result.update_sum[k]
    return time.perf_counter() - start, time.process_time() - cpu, total


def bench_model(name: str, reps: int, users: int, seed: int, ways: list[str], overrides: dict | None = None) -> dict:
    """`overrides`: run-config keys over the model's (the tests' small synthetic data)."""
    flat = {**read_toml(BASE), **MODELS[name], **(overrides or {})}
    config = RunConfig.from_flat(flat)
    data = load_sequence_data(config.data)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(data.num_users, size=min(users, data.num_users), replace=False))
    size = config.federation.cohort_chunk
    seeds = user_seeds(config.train.seed, 1, rows)
    chunks = [
        user_windows(data, rows[s : s + size], config.data.max_len, seeds[s : s + size])
        for s in range(0, len(rows), size)
    ]
    model = model_for(config.model, config.data, data.num_items, seed=config.train.seed, item_ids=data.item_ids)
    model.train()
    dp = device_recipe(config)  # one SGD step, clipped to clipping-norm on the device
    recipes = {"plain": dataclasses.replace(dp, clip=0.0), "vmap-dp": dp, "ghost-dp": dp}
    one_round(model, chunks[:1], dp, "ghost-dp")  # warm-up
    wall: dict[str, list[float]] = {way: [] for way in ways}
    cpu: dict[str, list[float]] = {way: [] for way in ways}
    for rep in range(reps):
        for way in ways:
            elapsed, used, _ = one_round(model, chunks, recipes[way], way)
            wall[way].append(elapsed)
            cpu[way].append(used)
        print(
            f"{name} rep {rep + 1}/{reps}: "
            + ", ".join(f"{w} {wall[w][-1]:.2f} s (cpu {cpu[w][-1]:.2f})" for w in ways),
            flush=True,
        )
    row = {"model": name, "users": len(rows), "chunk": size, "reps": reps}
    for kind, seconds in (("wall", wall), ("cpu", cpu)):
        for way, values in seconds.items():
            row[f"{way}_{kind}_min_s"] = min(values)
            row[f"{way}_{kind}_median_s"] = statistics.median(values)
        for way in ways[1:]:
            row[f"{way}_over_plain_{kind}_median"] = statistics.median(seconds[way]) / statistics.median(
                seconds["plain"]
            )
            row[f"{way}_over_plain_{kind}_min"] = min(seconds[way]) / min(seconds["plain"])
    if "vmap-dp" in ways and "ghost-dp" in ways:
        # The two DP sums of one round without dropout (its masks fall on other users in each path):
        # equal up to float rounding.
        model.eval()
        exact = {way: one_round(model, chunks, dp, way)[2] for way in ("vmap-dp", "ghost-dp")}
        model.train()
        scale = max(float(v.abs().max()) for v in exact["vmap-dp"].values())
        row["dp_sums_max_relative_difference_no_dropout"] = (
            max(float((exact["ghost-dp"][k] - v).abs().max()) for k, v in exact["vmap-dp"].items()) / scale
        )
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["sasrec", "gru", "sasrec-features"], choices=sorted(MODELS))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--users", type=int, default=1000, help="users per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=WAYS, help="plain first")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one Ray actor's share
    rows = [bench_model(name, args.reps, args.users, args.seed, args.ways) for name in args.models]
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
