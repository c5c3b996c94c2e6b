"""Crash benchmark: SIGKILLs at random moments of a loopback deployment run, one per trial.

One deployment of one-user devices (TLS, node authentication) stays up; each trial submits the same
run, kills one process at a random moment (the ServerApp, the SuperLink, or a SuperNode with the
ClientApp it runs), recovers as an operator would (submit the same run again; restart the SuperLink
on its state database; restart the device), lets the run finish, and compares its final model with
the uninterrupted run's, recomputed from the devices' files (`simulations.benchmarks.robustness.crash_drill`).

    FEDSEQREC_DATA_DIR=../shared/data .venv/bin/python -m simulations.benchmarks.robustness.bench_crashes \\
        --trials 10 --out runs/bench-crashes

Rows (OUT/crashes.json): the process killed, when (seconds after submit, and the last checkpointed
round then), the recovery's wall time, and the largest difference from the uninterrupted model.
A stopped benchmark resumes at the next trial.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import time
from pathlib import Path

import torch

from common.config import RunConfig
from simulations.benchmarks.robustness.crash_drill import (
    DRILL_MODEL,
    DRILL_TIMINGS,
    checkpoint_round,
    expected_model,
    final_arrays,
    retrying,
)

TARGETS = ("flwr-serverapp", "flower-superlink", "flower-supernode")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0, help="chooses the kills (which process, when)")
    args = parser.parse_args(argv)

    from common.data.synthetic import synthetic_interactions
    from fedseqrec.deployment_data import write_node_files
    from fedseqrec.launch.loopback import LoopbackDeployment, nodes_from_partition

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "crashes.json"
    rows = json.loads(rows_path.read_text()) if rows_path.exists() else []
    root = out / f"deployment-{secrets.token_hex(3)}"
    data_file = root / "interactions.csv"
    root.mkdir()
    synthetic_interactions(args.devices, 40, seed=1).to_csv(data_file, index=False)  # one user per device
    source = RunConfig.from_flat({**DRILL_MODEL, "data": str(data_file)}, where="bench_crashes")
    write_node_files(source, root / "partition", args.devices)
    nodes = nodes_from_partition(root / "partition", root / "work")
    drill = retrying(args.devices, args.rounds)
    server_config = {
        **DRILL_MODEL,
        **drill,
        "data": str(root / "not-on-the-server.csv"),
        "federated-evaluation": True,
        "catalogue-path": str(root / "partition" / "catalogue.json"),
    }
    expected = expected_model(server_config, root / "partition", args.rounds)
    choose = random.Random(args.seed)
    for _ in range(len(rows)):  # the draws of the trials already done
        choose.choice(TARGETS), choose.random(), choose.randrange(args.devices)
    deployment = LoopbackDeployment(
        root / "work",
        nodes,
        startup_timeout=300,
        stop_grace=20,
        extra_env={"FEDSEQREC_CACHE": str(root / "cache")},
        **DRILL_TIMINGS,
    )
    with deployment:
        # One uninterrupted run first: how long a run takes sets the window the kills are drawn from.
        started = time.perf_counter()
        deployment.run({**server_config, "out-dir": str(root / "uninterrupted")}, timeout=1800)
        run_seconds = time.perf_counter() - started
        straight = _difference(final_arrays(root / "uninterrupted"), expected)
        print(f"bench_crashes: uninterrupted run {run_seconds:.0f} s, {straight:.2e} from the recomputed model")
        for trial in range(len(rows) + 1, args.trials + 1):
            target, fraction, device = choose.choice(TARGETS), choose.random(), choose.randrange(args.devices)
            run_dir = root / f"trial-{trial}"
            config = {**server_config, "out-dir": str(run_dir)}
            started = time.perf_counter()
            proc = deployment.submit(config)
            delay = fraction * 0.9 * run_seconds
            time.sleep(delay)
            at_round = checkpoint_round(run_dir)
            finished_before = proc.poll() is not None
            if target == "flwr-serverapp":
                killed = deployment.sigkill("flwr-serverapp")
                deployment.abandon_run()
                proc = deployment.submit(config)
            elif target == "flower-superlink":
                deployment.restart_superlink()
                killed = [1]
                deployment.abandon_run()
                proc = deployment.submit(config)
            else:
                killed = deployment.sigkill_node(device)
                deployment.restart_node(device)
            deployment.wait(proc, timeout=1800)
            difference = _difference(final_arrays(run_dir), expected)
            history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            row = {
                "trial": trial,
                "killed": target + (f" (device {device})" if target == "flower-supernode" else ""),
                "processes_killed": len(killed),
                "seconds_after_submit": round(delay, 1),
                "checkpointed_round_then": at_round,
                "run_had_finished": finished_before,
                "wall_seconds": round(time.perf_counter() - started, 1),
                "repeated_rounds": sum(1 for r in history if r.get("attempts", 1) > 1),
                "max_abs_difference": difference,
                "identical": difference <= 1e-5,
            }
            rows.append(row)
            rows_path.write_text(json.dumps(rows, indent=2))
            print(f"bench_crashes: trial {trial}/{args.trials}: {json.dumps(row)}", flush=True)
    same = sum(r["identical"] for r in rows)
    print(f"bench_crashes: {same} of {len(rows)} final models equal the uninterrupted model")
    return 0


def _difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in b)


if __name__ == "__main__":
    raise SystemExit(main())
