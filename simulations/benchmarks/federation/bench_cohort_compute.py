"""Compute per user of the cohort engine against a centralized epoch on the same data (issue 32).

On one thread (a Ray actor's share), interleaved in one process, `--reps` times:
- cohort: the main job's round on one simulated SuperNode: its chunk of `cohort-chunk` users
  (`simulations/configs/ml1m-cohort.toml`: 128 of the round's 256), each taking one SGD step on its own last
  window (`common.training.cohort_clients.train_chunks`: the model built from the global weights, the users'
  windows, `cohort_update`), for `--chunks` chunks of randomly drawn users;
- cohort-float32: the same with `score-precision = "float32"` (the main job scores in bfloat16);
- cohort-before: the same with the batched one-step path as it was before issue 32 (every window
  position scored, `F.cross_entropy`, float32), for a paired before/after;
- centralized: `common.training.step.train_epoch` of the centralized baseline
  (`simulations/configs/ml1m-centralized.toml`: Adam, batch 64, the users' last windows) over the same users.
Reported: milliseconds per user (CPU time: on a machine shared with other jobs the steadier measure
of compute; wall time beside it), min and median over the reps, and cohort / centralized (goal <= 1.2).

    FEDSEQREC_DATA_DIR=../shared/data nice \
        -n 10 .venv/bin/python -m simulations.benchmarks.federation.bench_cohort_compute \
        --reps 5 --out /work/runs/ghost/bench-cohort-compute.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

import common.training.cohort
from common.config import RunConfig, read_toml
from common.data.load import load_sequence_data
from common.model.keyed_dropout import per_row_keys
from common.recipes import cohort_training
from common.training.cohort import CohortResult, user_loss
from common.training.cohort_clients import train_chunks
from common.training.step import StepOptions, model_for, train_epoch, window_dataset, window_loader

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _one_sgd_step_before(
    model, inputs, targets, lr: float, keys: torch.Tensor | None = None, precision: str = "float32"
) -> CohortResult:
    """`common.training.cohort._one_sgd_step` before issue 32: U x the mean loss over every window position,
    in float32 (`precision` is not used)."""
    U, W, T = inputs.shape
    params = dict(model.named_parameters())
    model.zero_grad(set_to_none=True)
    with per_row_keys(keys.repeat_interleave(W)) if keys is not None else nullcontext():
        total = U * user_loss(model, params, inputs.reshape(U * W, T), targets.reshape(U * W, T))
    total.backward()
    update = {k: -lr * p.grad.detach() for k, p in params.items()}
    model.zero_grad(set_to_none=True)
    return CohortResult(update, U, float(total.detach()))


def before(work):
    """`work` on the one-step path before issue 32."""

    def run():
        now = common.training.cohort._one_sgd_step
        common.training.cohort._one_sgd_step = _one_sgd_step_before
        try:
            return work()
        finally:
            common.training.cohort._one_sgd_step = now

    return run


def timed(work) -> tuple[float, float]:
    """Wall and CPU seconds of `work()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--chunks", type=int, default=8, help="chunks of cohort-chunk users per rep")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cohort = RunConfig.from_flat(read_toml(CONFIGS / "ml1m-cohort.toml"))
    central = RunConfig.from_flat(read_toml(CONFIGS / "ml1m-centralized.toml"))
    data = load_sequence_data(cohort.data)
    size = cohort.federation.cohort_chunk
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(data.num_users, size * args.chunks, replace=False))
    chunks = [(index, rows[index * size : (index + 1) * size]) for index in range(args.chunks)]
    global_arrays = {
        k: v.clone()
        for k, v in model_for(cohort.model, cohort.data, data.num_items, seed=cohort.train.seed).arrays().items()
    }

    model = model_for(central.model, central.data, data.num_items, seed=central.train.seed, item_ids=data.item_ids)
    optimizer = torch.optim.Adam(model.parameters(), lr=central.train.lr)
    sequences = data.train_sequences()
    dataset = window_dataset([sequences[r] for r in rows], central.data.max_len, central.data.train_windows)
    cohort32 = RunConfig.from_flat({**cohort.to_flat(), "score-precision": "float32"})
    ways = {
        "cohort": lambda: train_chunks(
            cohort_training(cohort, data.num_items), data, chunks, global_arrays, server_round=1
        ),
        "cohort-float32": lambda: train_chunks(
            cohort_training(cohort32, data.num_items), data, chunks, global_arrays, server_round=1
        ),
        "cohort-before": before(
            lambda: train_chunks(cohort_training(cohort, data.num_items), data, chunks, global_arrays, server_round=1)
        ),
        "centralized": lambda: train_epoch(
            model, window_loader(dataset, central.train.batch_size, 0), optimizer, StepOptions()
        ),
    }
    for work in ways.values():
        work()  # warm-up
    wall: dict[str, list[float]] = {way: [] for way in ways}
    cpu: dict[str, list[float]] = {way: [] for way in ways}
    for rep in range(args.reps):
        for way, work in ways.items():
            w, c = timed(work)
            wall[way].append(w * 1000 / len(rows))
            cpu[way].append(c * 1000 / len(rows))
        print(
            f"rep {rep + 1}/{args.reps}: "
            + ", ".join(f"{w} {cpu[w][-1]:.2f} ms/user cpu ({wall[w][-1]:.2f} wall)" for w in ways),
            flush=True,
        )
    row = {"users": len(rows), "chunk": size, "reps": args.reps}
    for kind, values in (("cpu", cpu), ("wall", wall)):
        for way, ms in values.items():
            row[f"{way}_{kind}_ms_per_user_min"] = min(ms)
            row[f"{way}_{kind}_ms_per_user_median"] = statistics.median(ms)
        for way in ("cohort", "cohort-float32", "cohort-before"):
            row[f"{way}_over_centralized_{kind}_median"] = statistics.median(values[way]) / statistics.median(
                values["centralized"]
            )
    print(json.dumps(row), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
