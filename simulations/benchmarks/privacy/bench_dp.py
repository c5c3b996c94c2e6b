"""DP benchmarks (issue 4).

`steps`: DP-SGD step time per Opacus mode against a non-private step, same model, batch and
machine, measured in one run. `utility`: the privacy-utility table: the same federation without
DP and at several target epsilons, for a chosen mechanism.

    .venv/bin/python -m simulations.benchmarks.privacy.bench_dp steps --out runs/bench-dp
    FEDSEQREC_DATA_DIR=../shared/data .venv/bin/python -m simulations.benchmarks.privacy.bench_dp utility \
        --mechanism client --epsilons 1 2 4 8 --run-config simulations/configs/ml1m-silo-iid.toml --out runs/bench-dp
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from common.model.models import ModelConfig, build_model
from common.plots import plot_curves
from common.privacy import grad_samplers  # noqa: F401  (the models' Opacus per-sample-gradient rules)
from common.training.step import StepOptions, train_epoch


def step_times(
    arch: str, mode: str | None, *, batch: int = 64, max_len: int = 50, items: int = 3416, steps: int = 6
) -> float:
    """Median seconds per optimiser step (after one warm-up step)."""
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(
            arch,
            items,
            max_len,
            emb_dim=64,
            hidden_dim=128,
            num_layers=2 if arch == "sasrec" else 1,
            num_heads=1,
            dropout=0.1,
        )
    )
    x = torch.randint(1, items + 1, (batch * steps, max_len))
    y = torch.randint(1, items + 1, (batch * steps, max_len))
    loader = DataLoader(TensorDataset(x, y), batch_size=batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    options = StepOptions(per_sample_grads=mode is not None)
    if mode is not None:
        model, optimizer, loader = PrivacyEngine().make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            poisson_sampling=False,
            grad_sample_mode=mode,
        )
    times = []
    for inputs, targets in loader:
        start = time.perf_counter()
        train_epoch(model, [(inputs, targets)], optimizer, options)
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def bench_steps(out: Path) -> dict:
    rows = []
    # Every non-private step first: DP training switches on memory retention for the rest of the
    # process (common/training/allocator.py), which non-private training does not use.
    bases = {arch: step_times(arch, None) for arch in ("sasrec", "gru", "lstm")}
    for arch, base in bases.items():
        row = {"model": arch, "non_private_s": base}
        for mode in ("hooks", "functorch", "ew"):  # ew is measured to show it fails
            try:
                seconds = step_times(arch, mode)
                row[mode] = {"seconds": seconds, "ratio": seconds / base}
            except Exception as exc:  # a mode that cannot run this model is a result, not a crash
                row[mode] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"batch": 64, "max_len": 50, "items": 3416, "threads": torch.get_num_threads(), "rows": rows}


def bench_utility(run_config: str, mechanism: str, epsilons: list[float], out: Path, rounds: int | None) -> dict:
    from simulations.benchmarks.federation.bench_federation import bench_run, load_run_config

    base = load_run_config(run_config, num_server_rounds=rounds)
    results = []
    for eps in [0.0, *epsilons]:
        flat = dict(base)
        if eps > 0:
            flat.update({"dp-mode": mechanism, "target-epsilon": eps})
            if mechanism == "client":
                flat["train-windows"] = "last"  # one sample per user: user-level per client
        run = bench_run(flat, out / (f"{mechanism}-eps{eps:g}" if eps else "no-dp"))
        privacy_file = out / (f"{mechanism}-eps{eps:g}" if eps else "no-dp") / "privacy.json"
        spent = json.loads(privacy_file.read_text())["epsilon"] if privacy_file.exists() else None
        results.append({"target_epsilon": eps or None, "epsilon_spent": spent, **run})
        print(json.dumps(results[-1]), flush=True)
    reference = results[0]["test_ndcg@10"]
    for row in results:
        row["ndcg_share_of_non_private"] = row["test_ndcg@10"] / reference if reference else None
    private = [r for r in results if r["target_epsilon"]]
    plot_curves(
        out / f"privacy-utility-{mechanism}.png",
        [r["target_epsilon"] for r in private],
        {"test NDCG@10": [r["test_ndcg@10"] for r in private], "non-private": [reference] * len(private)},
        xlabel="target epsilon",
        title=f"privacy-utility, {mechanism}-side DP",
    )
    return {"mechanism": mechanism, "run_config": run_config, "rows": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["steps", "utility"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--run-config")
    parser.add_argument("--mechanism", choices=["client", "server"], default="client")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--rounds", type=int)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = (
        bench_steps(out)
        if args.mode == "steps"
        else bench_utility(args.run_config, args.mechanism, args.epsilons, out, args.rounds)
    )
    name = "bench-steps.json" if args.mode == "steps" else f"bench-utility-{args.mechanism}.json"
    (out / name).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
