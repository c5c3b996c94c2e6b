"""Federation benchmarks (issue 3): quality and wall time of simulated runs, framework overhead
against a plain loop, and peak memory of a many-client simulation.

    FEDSEQREC_DATA_DIR=../shared/data .venv/bin/python -m simulations.benchmarks.federation.bench_federation run \
        --run-config simulations/configs/ml1m-silo-iid.toml --out runs/bench-fed-iid
    ... overhead --run-config simulations/configs/ml1m-silo-iid.toml --rounds 2
    ... memory --clients-per-round 20 --rounds 2

Every mode writes a JSON result next to its run folder and prints it.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from common.config import RunConfig, read_toml
from common.data.load import load_sequence_data
from common.data.partition import partition_users
from common.recipes import local_training
from common.training.federated import local_train
from common.training.step import model_for
from fedseqrec.launch.simulate import num_supernodes, simulate


class PeakMemory:
    """Peak memory of this process and all its descendants (Ray actors included), two ways.

    `peak` sums each process's RSS, which counts a page shared by N processes N times (torch's
    libraries and a forked worker's inherited pages are in every process); `peak_pss` sums the
    proportional set size (a shared page counts 1/N in each), what the tree takes from the machine.
    `breakdown` is the PSS by process name at the PSS peak, largest first: where the memory went.
    `peak_pss_job` leaves this (measuring) process out: what a job started from here takes by itself.
    """

    def __init__(self, interval: float = 0.5):
        self.peak, self.peak_pss, self.peak_pss_job, self.breakdown = 0, 0, 0, {}
        self._stop, self.interval = threading.Event(), interval

    def sample(self) -> None:
        """One look at the tree now; the peaks keep the largest seen."""
        me = psutil.Process()
        rss = pss = own = 0
        by_name: dict[str, int] = {}
        for proc in [me, *me.children(recursive=True)]:
            try:
                info = proc.memory_full_info()  # reads smaps_rollup: pss needs it
                name = proc.name()
            except psutil.Error:  # gone between listing and reading: it holds nothing now
                continue
            rss, pss = rss + info.rss, pss + info.pss
            own = info.pss if proc.pid == me.pid else own
            by_name[name] = by_name.get(name, 0) + info.pss
        self.peak = max(self.peak, rss)
        self.peak_pss_job = max(self.peak_pss_job, pss - own)
        if pss > self.peak_pss:
            self.peak_pss = pss
            self.breakdown = dict(sorted(by_name.items(), key=lambda kv: -kv[1]))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def report(self) -> dict:
        """The figures a benchmark's JSON carries (MB)."""
        return {
            "peak_rss_mb_tree": self.peak / 2**20,
            "peak_pss_mb_tree": self.peak_pss / 2**20,
            "peak_pss_mb_job": self.peak_pss_job / 2**20,  # the tree without this measuring process
            "pss_mb_by_process_at_peak": {k: round(v / 2**20, 1) for k, v in self.breakdown.items()},
        }

    def __enter__(self):
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def load_run_config(path: str | None, **overrides) -> dict:
    flat = RunConfig().to_flat()  # the defaults (pyproject.toml repeats them for Flower)
    if path:
        flat.update(read_toml(path))
    flat.update({k.replace("_", "-"): v for k, v in overrides.items() if v is not None})
    RunConfig.from_flat(flat)
    return flat


def bench_run(flat: dict, out: Path) -> dict:
    config = RunConfig.from_flat({**flat, "out-dir": str(out)})
    clients = num_supernodes(config)
    started = time.perf_counter()
    with PeakMemory() as memory:
        simulate({**flat, "out-dir": str(out)}, num_supernodes=clients)
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "mode": "run",
        "clients": clients,
        "clients_per_round": config.federation.clients_per_round,
        "rounds": summary["rounds"],
        "best_round": summary["best_round"],
        "test_ndcg@10": summary["test"]["ndcg@10"],
        "test_hr@10": summary["test"]["hr@10"],
        "wall_seconds": time.perf_counter() - started,
        "mean_round_seconds": float(np.mean([r["train-seconds"] for r in rows[1:]] or [rows[0]["train-seconds"]])),
        **memory.report(),
        "ndcg_by_round": [round(r["validation"]["ndcg@10"], 4) for r in rows if "validation" in r],
    }


def plain_round(config: RunConfig, data, parts, arrays: dict, server_round: int) -> dict:
    """The same client training and FedAvg as one Flower round, in a plain loop in this process."""
    chosen = np.random.default_rng([config.train.seed, server_round]).choice(
        parts.num_clients, size=min(config.federation.clients_per_round, parts.num_clients), replace=False
    )
    results = [
        local_train(
            local_training(config, data.subset(parts.clients[c]).num_items),
            data.subset(parts.clients[c]),
            arrays,
            server_round=server_round,
            client=int(c),
        )
        for c in sorted(chosen)
    ]
    weights = np.array([r.metrics["num-examples"] for r in results], dtype=np.float64)
    return {k: sum(r.arrays[k] * (w / weights.sum()) for r, w in zip(results, weights)) for k in arrays}


def bench_overhead(flat: dict, out: Path, rounds: int) -> dict:
    """Seconds per round, Flower simulation vs plain loop, same clients, measured in one run.
    Flower gets one worker (one CPU), like the plain loop; its first round (Ray start) is excluded."""
    config = RunConfig.from_flat(
        {**flat, "num-server-rounds": rounds + 1, "eval-every-rounds": 1000, "out-dir": str(out / "flower")}
    )
    data = load_sequence_data(config.data)
    parts = partition_users(data, config.federation, config.train.seed)
    arrays = model_for(
        config.model, config.data, data.num_items, seed=config.train.seed, item_ids=data.item_ids
    ).arrays()
    plain = []
    for server_round in range(1, rounds + 2):
        start = time.perf_counter()
        arrays = plain_round(config, data, parts, arrays, server_round)
        plain.append(time.perf_counter() - start)
    simulate(
        {**flat, "num-server-rounds": rounds + 1, "eval-every-rounds": 1000, "out-dir": str(out / "flower")},
        num_supernodes=parts.num_clients,
        num_cpus=1,
    )
    rows = [json.loads(line) for line in (out / "flower" / "metrics.jsonl").read_text().splitlines()]
    flower = [r["train-seconds"] for r in rows]
    ratio = float(np.mean(flower[1:]) / np.mean(plain[1:]))
    return {
        "mode": "overhead",
        "clients": parts.num_clients,
        "clients_per_round": min(config.federation.clients_per_round, parts.num_clients),
        "plain_round_seconds": plain,
        "flower_round_seconds": flower,
        "ratio_flower_over_plain": ratio,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["run", "overhead", "memory"])
    parser.add_argument("--run-config")
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--clients-per-round", type=int)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if args.mode == "run":
        result = bench_run(
            load_run_config(args.run_config, num_server_rounds=args.rounds, clients_per_round=args.clients_per_round),
            out,
        )
    elif args.mode == "overhead":
        result = bench_overhead(
            load_run_config(args.run_config, clients_per_round=args.clients_per_round), out, args.rounds or 2
        )
    else:
        flat = load_run_config(
            args.run_config,
            partition="user",
            num_server_rounds=args.rounds or 2,
            clients_per_round=args.clients_per_round or 20,
        )
        result = {**bench_run({**flat, "eval-users": 500}, out), "mode": "memory"}
    result["machine"] = f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"
    (out / f"bench-{args.mode}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
