"""privacy.json, privacy.md and epsilon.png for every DP run: what was spent, by whom, how."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.config import RunConfig
from common.plots import plot_curves
from server.privacy import PrivacyTracker


def _unit(config: RunConfig) -> str:
    if config.privacy.dp_mode == "server":
        return "client (one client's whole contribution; a user in cross-device runs)"
    if config.federation.partition == "user":
        return "event (one interaction: each lies in exactly one DP-SGD sample of its client)"
    if config.data.train_windows == "last":
        return "user (each user is one DP-SGD sample of its client's updates)"
    return "event (one interaction; users with several windows are covered per interaction only)"


def write_privacy_report(run_dir: Path, config: RunConfig, tracker: PrivacyTracker, history: list[dict],
                         population: int, delta: float, num_users: int) -> dict:
    privacy, fed = config.privacy, config.federation
    by_round = [{"round": r, "epsilon": e} for r, e in sorted(tracker.epsilon_by_round.items())]
    report = {
        "mechanism": "DP-FedAvg, server-side clipping + Gaussian noise (McMahan et al. 2018)"
        if privacy.dp_mode == "server" else "DP-SGD on each client (Opacus), per-client ledgers",
        "dp_mode": privacy.dp_mode, "unit_of_privacy": _unit(config), "delta": delta,
        "accountant": ("dp-accounting RDP, SampledWithoutReplacement (replace-one) per round"
                       if privacy.dp_mode == "server" else f"Opacus {privacy.accountant.upper()}"),
        "noise_multiplier": (tracker.noise_multiplier if privacy.dp_mode == "server"
                             else privacy.noise_multiplier if privacy.target_epsilon == 0
                             else "per client, calibrated to target_epsilon"),
        "target_epsilon": privacy.target_epsilon or None,
        "clipping_norm": privacy.clipping_norm if privacy.dp_mode == "server" else privacy.max_grad_norm,
        "adaptive_clipping": privacy.adaptive_clipping if privacy.dp_mode == "server" else None,
        "sampling_rate": (tracker.sampled / population if privacy.dp_mode == "server"
                          else "per client: batch-size / its samples (Poisson)"),
        "clients": population, "clients_per_round": tracker.sampled, "users": num_users,
        "rounds": len(history), "max_epsilon": privacy.max_epsilon or None, "secure_mode": privacy.secure_mode,
        "epsilon": by_round[-1]["epsilon"] if by_round else 0.0, "epsilon_by_round": by_round,
        "declined_clients": tracker.declined, "server_events": tracker.events,
    }
    if privacy.dp_mode == "client":
        eps = np.array(list(tracker.client_epsilon.values()) or [0.0])
        report["per_client_epsilon"] = {"clients_trained": len(tracker.client_epsilon), "min": float(eps.min()),
                                        "median": float(np.median(eps)), "mean": float(eps.mean()),
                                        "p90": float(np.quantile(eps, 0.9)), "max": float(eps.max())}
        report["epsilon_note"] = "run epsilon = the largest epsilon any client has spent"
    Path(run_dir, "privacy.json").write_text(json.dumps(report, indent=2))
    lines = ["# Privacy report", "", f"- Mechanism: {report['mechanism']}",
             f"- Unit of privacy: {report['unit_of_privacy']}",
             f"- Guarantee: ({report['epsilon']:.3f}, {delta:.2e})-DP after {report['rounds']} rounds",
             f"- Accountant: {report['accountant']}",
             f"- Noise multiplier: {report['noise_multiplier']}  target epsilon: {report['target_epsilon']}",
             f"- Clipping norm: {report['clipping_norm']}",
             f"- Sampling rate: {report['sampling_rate']}",
             f"- Clients: {population} ({tracker.sampled} per round); declined: {tracker.declined}"]
    if "per_client_epsilon" in report:
        stats = report["per_client_epsilon"]
        lines.append(f"- Per-client epsilon over {stats['clients_trained']} clients: min {stats['min']:.3f}, "
                     f"median {stats['median']:.3f}, p90 {stats['p90']:.3f}, max {stats['max']:.3f}")
    lines += ["", "| round | epsilon |", "|---|---|"] + [f"| {r['round']} | {r['epsilon']:.4f} |" for r in by_round]
    Path(run_dir, "privacy.md").write_text("\n".join(lines) + "\n")
    if by_round:
        plot_curves(Path(run_dir) / "epsilon.png", [r["round"] for r in by_round],
                    {"epsilon": [r["epsilon"] for r in by_round]}, xlabel="round",
                    title=f"privacy spent (delta = {delta:.1e}, {privacy.dp_mode}-side DP)")
    return {"epsilon": report["epsilon"], "delta": delta, "unit": report["unit_of_privacy"]}
