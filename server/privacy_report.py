"""privacy.json, privacy.md and epsilon.png for every DP run: what was spent, by whom, how.

Every epsilon names its unit, adjacency, sampling and sensitivity (`common.privacy.mechanism`),
and where the randomness it rests on came from (`common.privacy.randomness`). In client mode
these are what the clients reported they did, not what the config suggests.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from common.config import RunConfig
from common.plots import plot_curves
from common.privacy import randomness
from common.privacy.mechanism import client_dpsgd_facts, server_facts
from common.privacy.releases import release_table
from server.privacy import PrivacyTracker

# privacy.json's noise multiplier under client DP with a target: each client calibrates its own.
PER_CLIENT_NOISE = "per client, calibrated to target_epsilon"

UNIT_TEXT = {
    "client": "client (one client's whole contribution; a user when each client holds one user, partition = user)",
    "user": "user (each user is one DP-SGD sample of its client's updates)",
    "event": "event (one interaction: each lies in exactly one DP-SGD sample of its client)",
}


def client_mode_unit(tracker: PrivacyTracker) -> str:
    """The run's unit in client mode: the weakest unit any client trained under."""
    units = set(tracker.client_unit.values())
    return "event" if "event" in units or not units else "user"


def noise_source(tracker: PrivacyTracker) -> str:
    if tracker.mode == "server":
        return tracker.server_noise
    return randomness.REPRODUCIBLE if randomness.REPRODUCIBLE in tracker.client_noise.values() else randomness.SECRET


def write_privacy_report(
    run_dir: Path,
    config: RunConfig,
    tracker: PrivacyTracker,
    history: list[dict],
    population: int,
    delta: float,
    num_users: int,
    stopped_early: str | None = None,
    released_round: int | None = None,
) -> dict:
    privacy = config.privacy
    server = privacy.dp_mode == "server"
    if server:
        facts = server_facts(tracker.sampling, tracker.mechanism)
    else:
        facts = client_dpsgd_facts(client_mode_unit(tracker))
    source = noise_source(tracker)
    by_round = [{"round": r, "epsilon": e} for r, e in sorted(tracker.epsilon_by_round.items())]
    report = {
        "mechanism": _mechanism_text(tracker, server),
        "sampling_kind": ("none (dp-ftrl)" if tracker.ftrl else tracker.sampling) if server else "poisson",
        "server_mechanism": tracker.mechanism if server else None,
        "dp_mode": privacy.dp_mode,
        "unit_of_privacy": UNIT_TEXT[facts.unit],
        "unit": facts.unit,
        "adjacency": facts.adjacency,
        "sampling": facts.sampling,
        "sensitivity": facts.sensitivity,
        "delta": delta,
        "noise_randomness": source,
        "noise_randomness_note": randomness.DESCRIPTION[source],
        "accountant": _accountant_text(tracker, server, privacy.accountant),
        "accountant_name": tracker.accountant if server else f"opacus-{privacy.accountant}",
        "noise_multiplier": (
            tracker.noise_multiplier
            if server
            else privacy.noise_multiplier
            if privacy.target_epsilon == 0
            else PER_CLIENT_NOISE
        ),
        "target_epsilon": privacy.target_epsilon or None,
        "clipping_norm": privacy.clipping_norm if server else privacy.max_grad_norm,
        "adaptive_clipping": privacy.adaptive_clipping if server else None,
        **_server_details(tracker, privacy, server),
        "sampling_rate": (
            tracker.sampled / population if server else "per client: 1 / its batches per epoch (Poisson)"
        ),
        "clients": population,
        "clients_per_round": tracker.sampled,
        "users": num_users,
        "rounds": len(history),
        "max_epsilon": privacy.max_epsilon or None,
        "epsilon_cap": privacy.cap or None,
        "epsilon_cap_note": _cap_note(privacy),
        "population": population,
        "population_note": (
            "declared population-floor"
            if config.federation.population_floor
            else "the simulated users, or the clients of the server's own partition"
        ),
        "released_round": released_round,
        "selection": (
            "the public cohort's validation (public data; costs no privacy)"
            if config.federation.public_fraction > 0 and not config.federation.federated_evaluation
            else "the last round (no selection on protected users' data)"
        ),
        "public_data": _public_data(config, run_dir),
        **_projection(config, num_users),
        "releases": release_table(config),
        "secure_mode": privacy.secure_mode,
        "epsilon": by_round[-1]["epsilon"] if by_round else 0.0,
        "epsilon_by_round": by_round,
        "declined_clients": tracker.declined,
        "server_events": tracker.events,
        "stopped_early": stopped_early,
    }
    if not server:
        report.update(_client_epsilons(tracker))
    Path(run_dir, "privacy.json").write_text(json.dumps(report, indent=2))
    Path(run_dir, "privacy.md").write_text(_markdown(report, population, tracker.sampled))
    if by_round:
        plot_curves(
            Path(run_dir) / "epsilon.png",
            [r["round"] for r in by_round],
            {"epsilon": [r["epsilon"] for r in by_round]},
            xlabel="round",
            title=f"privacy spent (delta = {delta:.1e}, {privacy.dp_mode}-side DP, {facts.adjacency})",
        )
    return {
        **({"projection": report["projection"]["note"]} if "projection" in report else {}),
        "epsilon": report["epsilon"],
        "delta": delta,
        "unit": report["unit"],
        "adjacency": facts.adjacency,
        "noise_randomness": source,
    }


def _mechanism_text(tracker: PrivacyTracker, server: bool) -> str:
    if tracker.ftrl:
        return (
            "DP-FTRL, each user clips its update on its device, tree-aggregated Gaussian noise on the "
            "running sum with restarts every pass (Kairouz et al. 2021), cohort engine"
        )
    if server and tracker.cohort:
        return (
            "DP-FedAvg, each user clips its update on its device, Gaussian noise on the cohort's sum "
            "(McMahan et al. 2018), cohort engine"
        )
    if server:
        return "DP-FedAvg, server-side clipping + Gaussian noise (McMahan et al. 2018)"
    return "DP-SGD on each client (Opacus), per-client ledgers"


def _accountant_text(tracker: PrivacyTracker, server: bool, client_accountant: str) -> str:
    if tracker.ftrl:
        return (
            f"dp-accounting {tracker.accountant.upper()}, SingleEpochTreeAggregation(z, tree lengths) per pass, "
            "replace-with-zero"
        )
    if server and tracker.sampling == "poisson":
        return f"dp-accounting {tracker.accountant.upper()}, PoissonSampled(q, Gaussian(z)) per round, add/remove"
    if server:
        return (
            "dp-accounting RDP, SampledWithoutReplacement(N, m, Gaussian(z / 2)) per round (N: the clients "
            "sampled from that round), replace-one"
        )
    return f"Opacus {client_accountant.upper()}, add/remove one sample"


def _server_details(tracker: PrivacyTracker, privacy, server: bool) -> dict:
    """Adaptive clipping's and DP-FTRL's parameters, when the run used them."""
    details = {}
    if server and tracker.adaptive:
        details["adaptive_clipping_detail"] = {
            "quantile": privacy.clip_quantile,
            "clip_lr": privacy.clip_lr,
            "count_stddev": tracker.adaptive.count_stddev,
            "update_noise_multiplier": tracker.update_multiplier,
            "final_clipping_norm": tracker.adaptive.clip,
            "note": "the accounted z covers the update and the clip count together: 1/z^2 = 1/z_update^2 + "
            "1/(2 count_stddev)^2",
        }
    if tracker.ftrl:
        details["dp_ftrl"] = {
            "trees": tracker.tree.trees,
            "rounds_in_tree": tracker.rounds_in_tree,
            "max_participations": tracker.cap,
        }
    return details


def _client_epsilons(tracker: PrivacyTracker) -> dict:
    """Client mode: the spread of the clients' own ledgers (the run's epsilon is their largest)."""
    eps = np.array(list(tracker.client_epsilon.values()) or [0.0])
    return {
        "per_client_epsilon": {
            "clients_trained": len(tracker.client_epsilon),
            "min": float(eps.min()),
            "median": float(np.median(eps)),
            "mean": float(eps.mean()),
            "p90": float(np.quantile(eps, 0.9)),
            "max": float(eps.max()),
        },
        "epsilon_note": "run epsilon = the largest epsilon any client has spent",
        "clients_by_unit": dict(Counter(tracker.client_unit.values())),
        "clients_by_noise_randomness": dict(Counter(tracker.client_noise.values())),
    }


def _projection(config, num_users: int) -> dict:
    """simulated-population: the label every report of a projection carries."""
    projected = config.privacy.simulated_population
    if not projected:
        return {}
    return {
        "projection": {
            "simulated_population": projected,
            "trained_on_users": num_users,
            "note": f"A PROJECTION, not a guarantee for this run: the model trained on {num_users:,} users with the "
            f"noise a population of {projected:,} would need at the same expected cohort; the epsilon is for that "
            "population (q = cohort / it, delta = 1 / it), not for the users this run trained on",
        }
    }


def _public_data(config, run_dir) -> dict:
    """The public data the run used, each with why it is outside epsilon (named in every report)."""
    fed = config.federation
    used = {}
    if fed.public_fraction > 0:
        used["public_cohort"] = {
            "share_of_users": fed.public_fraction,
            "used_for": "validation" + (" and pretraining" if fed.pretrain_epochs else ""),
            "why_outside_epsilon": "users who consented to share their histories: kept out of the DP population "
            "and out of test",
        }
    if fed.public_corpus:
        used["public_corpus"] = {
            "name": fed.public_corpus,
            "used_for": "pretraining",
            "why_outside_epsilon": "another service's published users, not members of the protected population",
        }
    pretrain = Path(run_dir, "pretrain.json")
    if pretrain.exists():
        used["pretraining"] = {
            key: value for key, value in json.loads(pretrain.read_text()).items() if key in ("sources", "epoch_kept")
        }
    return used


def _cap_note(privacy) -> str:
    if privacy.max_epsilon and privacy.target_epsilon and privacy.max_epsilon > privacy.target_epsilon:
        return (
            f"max-epsilon {privacy.max_epsilon:g} raises the cap above target-epsilon {privacy.target_epsilon:g}: "
            "the user asked for it"
        )
    if privacy.cap:
        return f"no round is released past {privacy.cap:g}"
    return "no cap (neither target-epsilon nor max-epsilon is set)"


def _markdown(report: dict, population: int, sampled: int) -> str:
    lines = ["# Privacy report", ""]
    if report["noise_randomness"] == randomness.REPRODUCIBLE:
        lines += [f"> **Warning**: {report['noise_randomness_note']}.", ""]
    lines += [
        f"- Guarantee: ({report['epsilon']:.3f}, {report['delta']:.2e})-DP after {report['rounds']} rounds, "
        f"per {report['unit']}, {report['adjacency']} adjacency",
        f"- Mechanism: {report['mechanism']}",
        f"- Unit of privacy: {report['unit_of_privacy']}",
        f"- Adjacency: {report['adjacency']}",
        f"- Sampling: {report['sampling']}",
        f"- Sensitivity: {report['sensitivity']}",
        f"- Noise and sampling randomness: {report['noise_randomness_note']}",
        f"- Accountant: {report['accountant']}",
        f"- Noise multiplier: {report['noise_multiplier']}  target epsilon: {report['target_epsilon']}",
        f"- Clipping norm: {report['clipping_norm']}",
        f"- Sampling rate: {report['sampling_rate']}",
        f"- Clients: {population} ({sampled} per round); declined: {report['declined_clients']}",
    ]
    if "dp_ftrl" in report:
        ftrl = report["dp_ftrl"]
        lines.append(
            f"- DP-FTRL: {ftrl['rounds_in_tree']} rounds per tree, each user in at most one round per tree "
            f"and at most {ftrl['max_participations']} trees; trees run per pass: {ftrl['trees']}"
        )
    if "adaptive_clipping_detail" in report:
        detail = report["adaptive_clipping_detail"]
        lines.append(
            f"- Adaptive clipping: quantile {detail['quantile']}, count noise {detail['count_stddev']:.2f}, "
            f"update noise multiplier {detail['update_noise_multiplier']:.3f}, final C "
            f"{detail['final_clipping_norm']:.4f} ({detail['note']})"
        )
    lines.append(f"- Cap: {report['epsilon_cap_note']}")
    if "projection" in report:
        lines.insert(1, f"\n**{report['projection']['note']}.**\n")
    lines.append(f"- Released model: round {report['released_round']}, chosen by {report['selection']}")
    for name, used in report.get("public_data", {}).items():
        if "why_outside_epsilon" in used:
            lines.append(f"- Public data, {name.replace('_', ' ')} ({used['used_for']}): {used['why_outside_epsilon']}")
    if report.get("stopped_early"):
        lines.append(f"- Stopped early: {report['stopped_early']}")
    if "per_client_epsilon" in report:
        stats = report["per_client_epsilon"]
        lines.append(
            f"- Per-client epsilon over {stats['clients_trained']} clients: min {stats['min']:.3f}, "
            f"median {stats['median']:.3f}, p90 {stats['p90']:.3f}, max {stats['max']:.3f}"
        )
        lines.append(
            f"- Clients by unit: {report['clients_by_unit']}; by noise source: {report['clients_by_noise_randomness']}"
        )
    lines += ["", "## What this run releases", ""]
    for section, rows in report["releases"].items():
        lines += [f"### {section.replace('_', ' ')}", "", "| name | class | why |", "|---|---|---|"]
        lines += [f"| `{r['name']}` | {r['kind']} | {r['why']} |" for r in rows]
        lines.append("")
    lines += ["## Epsilon per round", "", "| round | epsilon |", "|---|---|"]
    lines += [f"| {r['round']} | {r['epsilon']:.4f} |" for r in report["epsilon_by_round"]]
    return "\n".join(lines) + "\n"
