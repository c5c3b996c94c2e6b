"""What sequence augmentation buys (issue 15): the same run with and without `augment`, one script.

    FEDSEQREC_DATA_DIR=../shared/data .venv/bin/python -m simulations.benchmarks.quality.bench_augment centralized \\
        --data ml-100k --out runs/bench-augment --variants none crop mask reorder substitute all
    ... silo --data ml-100k --out runs/bench-augment --variants none all
    ... cohort --data ml-100k --out runs/bench-augment --variants none all --rounds 300

Settings: centralized = simulations/configs/ml1m-centralized.toml, silo = ml1m-silo-iid.toml, cohort =
ml1m-cohort.toml, each with `--data` and the variant's `augment` (rates: the defaults). Every
figure is validation-selected: the epoch or round is chosen on validation NDCG@10, test reported.
Writes bench-augment-<setting>.json in --out and prints it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import psutil
import torch

from common.config import RunConfig, read_toml
from fedseqrec.centralized import train_centralized
from fedseqrec.launch.simulate import num_supernodes, simulate
from simulations.benchmarks.federation.bench_federation import load_run_config

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = ROOT / "simulations" / "configs"
SETTINGS = {"centralized": "ml1m-centralized.toml", "silo": "ml1m-silo-iid.toml", "cohort": "ml1m-cohort.toml"}
VARIANTS = {
    "none": "",
    "crop": "crop",
    "mask": "mask",
    "reorder": "reorder",
    "substitute": "substitute",
    "all": "crop,mask,reorder,substitute",
}


def run_variant(setting: str, flat: dict, out: Path) -> dict:
    started = time.perf_counter()
    if setting == "centralized":
        metrics = train_centralized(RunConfig.from_flat(flat), out, show_progress=False)
        validation, test, chosen = metrics["validation"], metrics["test"], {"best_epoch": metrics["best_epoch"]}
    else:
        flat = {**flat, "out-dir": str(out)}
        simulate(flat, num_supernodes=num_supernodes(RunConfig.from_flat(flat)))
        summary = json.loads((out / "summary.json").read_text())
        validation, test, chosen = summary["validation"], summary["test"], {"best_round": summary["best_round"]}
    return {
        **chosen,
        "validation_ndcg@10": validation["ndcg@10"],
        "test_ndcg@10": test["ndcg@10"],
        "test_hr@10": test["hr@10"],
        "wall_seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("setting", choices=list(SETTINGS))
    parser.add_argument("--data", default="ml-100k")
    parser.add_argument("--out", required=True)
    parser.add_argument("--variants", nargs="+", default=["none", "all"], choices=list(VARIANTS))
    parser.add_argument("--rounds", type=int, help="num-server-rounds (federated settings)")
    parser.add_argument("--epochs", type=int, help="epochs (centralized)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    base_file = CONFIGS / SETTINGS[args.setting]
    if args.setting == "centralized":
        base = {**read_toml(base_file), "data": args.data}
        if args.epochs:
            base["epochs"] = args.epochs
    else:
        base = load_run_config(str(base_file), data=args.data, num_server_rounds=args.rounds)
    rows = {}
    for variant in args.variants:
        rows[variant] = run_variant(
            args.setting, {**base, "augment": VARIANTS[variant]}, out / f"{args.setting}-{variant}"
        )
        print(variant, json.dumps(rows[variant]), flush=True)
    result = {
        "setting": args.setting,
        "config": str(base_file.relative_to(ROOT)),
        "data": args.data,
        "overrides": {k: base[k] for k in ("epochs", "num-server-rounds") if k in base},
        "augment_rates": {k: v for k, v in RunConfig().to_flat().items() if k.startswith("augment-")},
        "variants": rows,
        "machine": f"{psutil.cpu_count()} cores (shared), {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (out / f"bench-augment-{args.setting}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
