"""Device fine-tuning on ML-1M: how much a device's own next-item accuracy gains from personalisation.

For each sampled user of the run's data: the global model (RUN_DIR/model.pt) and the model that the
user's device fine-tunes on its own training items (`common.training.personalization.fine_tune`: all but the
last two items; the second to last, the validation item, chooses the step, 0 = keep the global
model) rank the test item (the last) over the full catalogue with seen items masked, exactly as
evaluation does. NDCG@10 / HR@10 per user, averaged, with the paired difference and its standard
error; members of the federation and the users it held out (holdout-fraction) are reported apart.
`--dp-users N` also fine-tunes N users with DP-SGD (dp-mode = client path, a fresh ledger each;
z = --dp-noise) to show what DP costs a device's personalisation.

    FEDSEQREC_DATA_DIR=../shared/data .venv/bin/python -m simulations.benchmarks.device.bench_personalize \\
        /work/runs/user-dp/non-private --users 500 --out simulations/results/personalization.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from common.config import RunConfig
from common.data.load import load_sequence_data
from common.data.partition import partition_users
from common.evaluation.ranking import model_scores, rank_targets
from common.model.checkpoint import load_model
from common.privacy.ledger import PrivacyLedger
from common.recipes import local_training
from common.training.personalization import DPBudget, FineTuning, fine_tune


def _rank(model, history: np.ndarray, target: int, num_items: int) -> int:
    ranks, _ = rank_targets(model_scores(model), [history], np.array([target]), num_items=num_items)
    return int(ranks[0])


def _metrics(ranks: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    hit = ranks < k
    return np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0), hit.astype(float)


def _summary(rows: list[dict]) -> dict:
    if not rows:
        return {}
    g = np.array([r["global_rank"] for r in rows])
    t = np.array([r["tuned_rank"] for r in rows])
    (g_ndcg, g_hr), (t_ndcg, t_hr) = _metrics(g), _metrics(t)
    diff = t_ndcg - g_ndcg
    return {
        "users": len(rows),
        "global": {"ndcg@10": g_ndcg.mean(), "hr@10": g_hr.mean()},
        "fine_tuned": {"ndcg@10": t_ndcg.mean(), "hr@10": t_hr.mean()},
        "ndcg@10_gain": diff.mean(),
        "ndcg@10_gain_stderr": diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else None,
        "hr@10_gain": (t_hr - g_hr).mean(),
        "users_rank_better": int((t < g).sum()),
        "users_rank_worse": int((t > g).sum()),
        "kept_global_model": int(sum(r["best_step"] == 0 for r in rows)),
        "mean_best_step": float(np.mean([r["best_step"] for r in rows])),
        "seconds_per_user": float(np.mean([r["seconds"] for r in rows])),
    }


def run(
    run_dir: Path, users: int, steps: int, lrs: list[float], dp_users: int, dp_noise: float, seed: int, out: Path
) -> dict:
    """Writes `out` after each setting, so that a stopped benchmark keeps what it measured."""
    torch.set_num_threads(1)
    model, item_ids, metadata = load_model(run_dir / "model.pt")
    config = RunConfig.from_flat(metadata["run_config"])
    data = load_sequence_data(config.data)
    if not np.array_equal(data.item_ids, item_ids):
        raise SystemExit("the run's data has another item catalogue than its model")
    holdout = set(partition_users(data, config.federation, config.train.seed).holdout.tolist())
    chosen = np.random.default_rng(seed).choice(data.num_users, size=min(users, data.num_users), replace=False)
    result = {"run_dir": str(run_dir), "steps": steps, "settings": {}}
    for lr in lrs:
        rows = []
        for user in chosen:
            seq = data.sequence(int(user))
            started = time.perf_counter()
            tuned, report = fine_tune(
                model,
                seq[:-2],
                int(seq[-2]),
                local_training(config, model.config.num_items),
                FineTuning(steps, lr, seed=int(user)),
            )
            rows.append(
                {
                    "user": int(user),
                    "member": int(user) not in holdout,
                    "global_rank": _rank(model, seq[:-1], int(seq[-1]), data.num_items),
                    "tuned_rank": _rank(tuned, seq[:-1], int(seq[-1]), data.num_items),
                    "best_step": report["best_step"],
                    "validation_gain": report["validation_loss"][0] - min(report["validation_loss"]),
                    "seconds": time.perf_counter() - started,
                }
            )
        result["settings"][f"lr={lr:g}"] = {
            "lr": lr,
            "all": _summary(rows),
            "members": _summary([r for r in rows if r["member"]]),
            "held_out_users": _summary([r for r in rows if not r["member"]]),
            "mean_validation_loss_gain": float(np.mean([r["validation_gain"] for r in rows])),
        }
        print(json.dumps({f"lr={lr:g}": result["settings"][f"lr={lr:g}"]["all"]}, default=float), flush=True)
        out.write_text(json.dumps(result, indent=2, default=float))
    if dp_users:
        lr = lrs[0]
        dp_config = config.replace(
            **{"dp-mode": "client", "noise-multiplier": dp_noise, "cohort-engine": False, "user-sampling": "fixed"}
        )
        rows, epsilons = [], []
        for user in chosen[:dp_users]:
            seq = data.sequence(int(user))
            ledger = PrivacyLedger(dp_config.privacy.accountant)
            budget = DPBudget(ledger, 1.0 / data.num_users, dp_noise)
            started = time.perf_counter()
            tuned, report = fine_tune(
                model,
                seq[:-2],
                int(seq[-2]),
                local_training(dp_config, model.config.num_items),
                FineTuning(steps, lr),
                budget,
            )
            epsilons.append(report["epsilon_after"])
            rows.append(
                {
                    "user": int(user),
                    "member": int(user) not in holdout,
                    "global_rank": _rank(model, seq[:-1], int(seq[-1]), data.num_items),
                    "tuned_rank": _rank(tuned, seq[:-1], int(seq[-1]), data.num_items),
                    "best_step": report["best_step"],
                    "seconds": time.perf_counter() - started,
                }
            )
        result["dp"] = {
            "lr": lr,
            "noise_multiplier": dp_noise,
            "delta": 1.0 / data.num_users,
            "epsilon_per_device_median": float(np.median(epsilons)),
            "epsilon_per_device_range": [float(min(epsilons)), float(max(epsilons))],
            "all": _summary(rows),
        }
        print(json.dumps({"dp": result["dp"]}, default=float), flush=True)
        out.write_text(json.dumps(result, indent=2, default=float))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-4])
    parser.add_argument("--dp-users", type=int, default=0)
    parser.add_argument("--dp-noise", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    run(Path(args.run_dir), args.users, args.steps, args.lrs, args.dp_users, args.dp_noise, args.seed, Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
