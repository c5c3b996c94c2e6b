"""`fedseqrec audit RUN_DIR`: run every audit that applies to a finished run; write audit.json,
audit.md, roc.png and canary-scores.png. Anything that contradicts the run's privacy claim goes in
the "failures" list (the CLI exits non-zero on failures only with --strict)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common.audit.accounting import audit_client_ledgers, audit_ftrl_trees, audit_server_events  # noqa: E402
from common.privacy.randomness import REPRODUCIBLE  # noqa: E402
from common.audit.canaries import audit_canaries, exposure, make_canaries  # noqa: E402
from common.audit.membership import FPR_POINTS, dp_tpr_bound, membership_inference, sequence_scores  # noqa: E402
from common.audit.messages import AUDIT_DIR, audit_messages  # noqa: E402
from common.audit.update_leakage import update_leakage  # noqa: E402
from common.checkpoint import load_model  # noqa: E402
from common.config import RunConfig  # noqa: E402
from common.data.load import load_sequence_data  # noqa: E402
from common.errors import FedSeqRecError  # noqa: E402
from common.partition import partition_users, run_canaries  # noqa: E402

EXPOSURE_CANDIDATES = 1000


def load_run(run_dir: Path):
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FedSeqRecError(f"{run_dir}: no such run folder; pass the out-dir of a finished run")
    if not (run_dir / "model.pt").exists():
        raise FedSeqRecError(f"{run_dir}: no model.pt; the run has not finished (or is not a fedseqrec run)")
    model, _, metadata = load_model(run_dir / "model.pt")
    flat = metadata.get("run_config")
    if flat is None and (run_dir / "config.json").exists():
        flat = json.loads((run_dir / "config.json").read_text())
    if flat is None:
        raise FedSeqRecError(f"{run_dir}: model.pt has no run_config and there is no config.json")
    config = RunConfig.from_flat(flat, where=f"{run_dir} run config")
    privacy = json.loads((run_dir / "privacy.json").read_text()) if (run_dir / "privacy.json").exists() else None
    return model, config, privacy


def _sample(users: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(users, size=min(count, len(users)), replace=False)) if len(users) else users


def _bound_applies_to_users(privacy: dict | None) -> bool:
    return privacy is not None and privacy["unit_of_privacy"].startswith(("user", "client"))


def accounting_section(run_dir: Path, config: RunConfig, privacy: dict | None) -> dict:
    if privacy is None:
        return {"skipped": "not a DP run (no privacy.json)"}
    if privacy["dp_mode"] == "server" and "dp_ftrl" in privacy:
        section = audit_ftrl_trees(privacy["dp_ftrl"]["trees"], noise_multiplier=privacy["noise_multiplier"],
                                   delta=privacy["delta"], recorded=privacy["epsilon"],
                                   adjacency=privacy.get("adjacency"))
        section["failures"] += randomness_failures(run_dir, config, privacy)
        return section
    if privacy["dp_mode"] == "server":
        section = audit_server_events(privacy["server_events"], delta=privacy["delta"], recorded=privacy["epsilon"],
                                      adjacency=privacy.get("adjacency"),
                                      sampling=privacy.get("sampling_kind", "fixed"))
        section["failures"] += randomness_failures(run_dir, config, privacy)
        return section
    ledgers = {p.parent.name: json.loads(p.read_text())["history"]
               for p in sorted((run_dir / "client-state").glob("client-*/privacy_ledger.json"))}
    if not ledgers:
        return {"skipped": "client-mode run without ledgers in RUN_DIR/client-state (deployed clients keep theirs)"}
    section = audit_client_ledgers(ledgers, delta=privacy["delta"], recorded=privacy["epsilon"],
                                   accountant=config.privacy.accountant)
    section["failures"] += randomness_failures(run_dir, config, privacy)
    return section


def randomness_failures(run_dir: Path, config: RunConfig, privacy: dict) -> list[str]:
    """A guarantee rests on noise the adversary cannot redo: a report must say where it came from,
    and a run whose noise was derived from the seed must say so where people read it."""
    source = privacy.get("noise_randomness")
    if source is None:
        return ["privacy.json does not say where the DP noise and sampling came from (a run from before "
                "secret noise: its noise was derived from the run seed)"]
    failures = []
    if config.privacy.reproducible_dp_noise and config.privacy.dp_mode == "server" and source != REPRODUCIBLE:
        failures.append(f"the run config asked for reproducible-dp-noise but privacy.json says {source!r}")
    if source == REPRODUCIBLE:
        markdown = (run_dir / "privacy.md").read_text() if (run_dir / "privacy.md").exists() else ""
        if "does NOT hold against anyone who knows the seed" not in markdown:
            failures.append("the DP noise was derived from the run seed and privacy.md does not warn that the "
                            "guarantee does not hold against anyone who knows the seed")
    return failures


def membership_section(model, config: RunConfig, data, partition, privacy, users: int, rng) -> dict:
    if len(partition.holdout) == 0:
        return {"skipped": "the run kept no holdout users (holdout-fraction = 0): no non-members to compare"}
    members = np.concatenate(partition.clients)
    members = members[members < data.num_users]  # real users only; canaries are audited on their own
    chosen, held = _sample(members, users, rng), _sample(partition.holdout, users, rng)
    train = data.train_sequences()
    applies = _bound_applies_to_users(privacy)
    result = membership_inference(model, [train[u] for u in chosen], [train[u] for u in held],
                                  max_len=config.data.max_len,
                                  epsilon=privacy["epsilon"] if applies else None,
                                  delta=privacy["delta"] if applies else None)
    result["dp_bound_applies"] = applies
    result["failures"] = []
    if applies:
        for name, attack in result["attacks"].items():
            for f in FPR_POINTS:
                low = attack[f"tpr_at_{f:g}_fpr"]["ci95"][0]
                bound = result["dp_bound"]["tpr_at_fpr"][f"{f:g}"]
                if low > bound:
                    result["failures"].append(f"membership ({name}): TPR at {f:g} FPR is at least {low:.4f} "
                                              f"(95% CI) but ({privacy['epsilon']:.3g}, {privacy['delta']:.2g})-DP "
                                              f"allows at most {bound:.4f}")
    return result


def canary_section(model, config: RunConfig, data, privacy, k: int, seed: int) -> dict:
    fed = config.federation
    if fed.canaries == 0:
        return {"skipped": "the run inserted no canaries (canaries = 0)"}
    canaries = run_canaries(data.num_items, fed, config.train.seed)
    train = [s[:-2] for s in canaries.sequences]
    loss = sequence_scores(model, train, max_len=config.data.max_len)["loss"]
    delta = privacy["delta"] if privacy else 1.0 / data.num_users
    result = audit_canaries(-loss, canaries.included, k=k or max(1, fed.canaries // 4), delta=delta)
    candidates = make_canaries(data.num_items, EXPOSURE_CANDIDATES, fed.canary_length, seed + 1).sequences
    candidate_loss = sequence_scores(model, [s[:-2] for s in candidates], max_len=config.data.max_len)["loss"]
    exposures = exposure(loss, candidate_loss)
    result.update({"loss": loss.tolist(), "included_mask": canaries.included.tolist(),
                   "exposure": {"candidates": EXPOSURE_CANDIDATES, "max_possible": math.log2(EXPOSURE_CANDIDATES + 1),
                                "mean_included": float(exposures[canaries.included].mean()) if canaries.included.any() else None,
                                "mean_excluded": float(exposures[~canaries.included].mean()) if (~canaries.included).any() else None},
                   "failures": []})
    one_sample = config.privacy.dp_mode == "server" or fed.canary_length - 2 <= config.data.max_len + 1
    result["dp_claim_covers_canary"] = privacy is not None and one_sample
    if result["dp_claim_covers_canary"] and result["epsilon_lower_bound"] > privacy["epsilon"]:
        result["failures"].append(f"canaries: empirical epsilon lower bound {result['epsilon_lower_bound']:.3f} "
                                  f"exceeds the claimed epsilon {privacy['epsilon']:.3f}: the DP implementation "
                                  "or its accounting has a bug")
    return result


def leakage_section(model, config: RunConfig, data, partition, privacy, users: int, rng) -> dict:
    members = np.concatenate(partition.clients)
    members = members[members < data.num_users]
    noise = privacy["noise_multiplier"] if privacy and isinstance(privacy.get("noise_multiplier"), (int, float)) \
        else config.privacy.noise_multiplier
    return update_leakage(config, data, model.arrays(), _sample(members, users, rng), noise_multiplier=float(noise),
                          clipping_norm=config.privacy.clipping_norm, max_grad_norm=config.privacy.max_grad_norm,
                          seed=config.train.seed)


def _plot_roc(path: Path, membership: dict) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, curve in membership["curves"].items():
        auc = membership["attacks"][name]["auc"]["value"]
        ax.plot(np.maximum(curve["fpr"], 1e-4), np.maximum(curve["tpr"], 1e-4), label=f"{name} (AUC {auc:.3f})")
    grid = np.logspace(-4, 0, 200)
    ax.plot(grid, grid, linestyle=":", color="grey", label="chance")
    if "dp_bound" in membership:
        bound = membership["dp_bound"]
        ax.plot(grid, np.maximum(dp_tpr_bound(grid, bound["epsilon"], bound["delta"]), 1e-4), linestyle="--",
                color="black", label=f"({bound['epsilon']:.2g}, {bound['delta']:.1e})-DP bound")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(1e-4, 1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"user membership inference ({membership['members']} vs {membership['nonmembers']})")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_canaries(path: Path, canaries: dict) -> None:
    loss, included = np.array(canaries["loss"]), np.array(canaries["included_mask"], dtype=bool)
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(loss.min(), loss.max() + 1e-9, 20)
    ax.hist(loss[included], bins=bins, alpha=0.6, label=f"included ({included.sum()})")
    ax.hist(loss[~included], bins=bins, alpha=0.6, label=f"excluded ({(~included).sum()})")
    ax.set_xlabel("final model's loss on the canary (lower = looks trained on)")
    ax.set_ylabel("canaries")
    ax.set_title(f"canaries: {canaries['correct']}/{canaries['guesses']} guesses right, "
                 f"epsilon >= {canaries['epsilon_lower_bound']:.2f} (95%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(report: dict) -> str:
    lines = ["# Privacy audit", "", f"- Run: `{report['run_dir']}`",
             f"- DP mode: {report['dp_mode']}; claimed epsilon: {report['claimed_epsilon']}, "
             f"delta: {report['delta']}; unit: {report.get('unit_of_privacy')}; adjacency: {report.get('adjacency')}",
             f"- DP noise and sampling: {report.get('noise_randomness')}",
             f"- Failures: {len(report['failures'])}"]
    lines += [f"  - **FAIL**: {f}" for f in report["failures"]]
    acc = report["accounting"]
    lines += ["", "## 1. Accounting recomputed", ""]
    if "skipped" in acc:
        lines.append(f"Skipped: {acc['skipped']}")
    else:
        lines.append(f"Recorded epsilon {acc['recorded_epsilon']:.4f}; recomputed: " +
                     ", ".join(f"{k} {v:.4f}" for k, v in acc["epsilon"].items()) + ".")
        lines.append(f"Method: {acc['method']}")
    mia = report["membership"]
    lines += ["", "## 2. Membership inference on users", ""]
    if "skipped" in mia:
        lines.append(f"Skipped: {mia['skipped']}")
    else:
        lines += [f"{mia['members']} members vs {mia['nonmembers']} holdout users; 95% bootstrap intervals.", "",
                  "| score | AUC | TPR @ 0.1% FPR | TPR @ 1% FPR |", "|---|---|---|---|"]
        for name, a in mia["attacks"].items():
            cells = [f"{a[m]['value']:.3f} [{a[m]['ci95'][0]:.3f}, {a[m]['ci95'][1]:.3f}]"
                     for m in ("auc", "tpr_at_0.001_fpr", "tpr_at_0.01_fpr")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if "dp_bound" in mia:
            lines.append(f"\nDP bound on TPR: {mia['dp_bound']['tpr_at_fpr']} (roc.png)")
    can = report["canaries"]
    lines += ["", "## 3. Canaries", ""]
    if "skipped" in can:
        lines.append(f"Skipped: {can['skipped']}")
    else:
        lines += [f"{can['canaries']} canaries ({can['included']} included); {can['k_in']} guessed IN, "
                  f"{can['k_out']} OUT: {can['correct']}/{can['guesses']} correct.",
                  f"Empirical epsilon lower bound (95%, delta {can['delta']:.2e}): **{can['epsilon_lower_bound']:.3f}**"
                  + (f" vs claimed {report['claimed_epsilon']:.3f}" if report["claimed_epsilon"] is not None else ""),
                  f"Exposure (max {can['exposure']['max_possible']:.2f} bits): included "
                  f"{can['exposure']['mean_included']}, excluded {can['exposure']['mean_excluded']}"]
    leak = report["update_leakage"]
    lines += ["", "## 4. Item leakage from one client's update", "",
              f"{leak['users']} users; z = {leak['noise_multiplier']}, C = {leak['clipping_norm']}, "
              f"per-sample C = {leak['max_grad_norm']}; random guessing precision {leak['random_guess_precision']:.3f}.", "",
              "| setting | precision | recall | items predicted |", "|---|---|---|---|"]
    lines += [f"| {name} | {v['precision']:.3f} | {v['recall']:.3f} | {v['predicted']:.1f} |"
              for name, v in leak["settings"].items()]
    msg = report["messages"]
    lines += ["", "## 5. Messages clients sent", ""]
    lines.append(f"Skipped: {msg['skipped']}" if "skipped" in msg else
                 f"{msg['messages']} replies in {msg['files']} files ({msg['by_type']}); "
                 f"{len(msg['failures'])} violations of the whitelist.")
    return "\n".join(lines) + "\n"


def run_audit(run_dir: Path, *, canary_guesses: int = 0, users: int = 500, leakage_users: int = 10,
              seed: int = 0) -> dict:
    run_dir = Path(run_dir)
    model, config, privacy = load_run(run_dir)
    data = load_sequence_data(config.data)
    partition = partition_users(data, config.federation, config.train.seed)
    rng = np.random.default_rng(seed)
    report = {"run_dir": str(run_dir), "dp_mode": config.privacy.dp_mode,
              "claimed_epsilon": privacy["epsilon"] if privacy else None,
              "delta": privacy["delta"] if privacy else None,
              "unit_of_privacy": privacy["unit_of_privacy"] if privacy else None,
              "adjacency": privacy.get("adjacency") if privacy else None,
              "noise_randomness": privacy.get("noise_randomness") if privacy else None,
              "accounting": accounting_section(run_dir, config, privacy),
              "membership": membership_section(model, config, data, partition, privacy, users, rng),
              "canaries": canary_section(model, config, data, privacy, canary_guesses, seed),
              "update_leakage": leakage_section(model, config, data, partition, privacy, leakage_users, rng)}
    arrays = {k: (list(v.shape), str(v.numpy().dtype)) for k, v in model.arrays().items()}
    report["messages"] = (audit_messages(run_dir, arrays) if (run_dir / AUDIT_DIR).is_dir()
                          else {"skipped": "no recorded messages (run with audit-messages = true)"})
    report["failures"] = [f for key in ("accounting", "membership", "canaries", "messages")
                          for f in report[key].get("failures", [])]
    (run_dir / "audit.json").write_text(json.dumps(report, indent=2))
    (run_dir / "audit.md").write_text(_markdown(report))
    if "curves" in report["membership"]:
        _plot_roc(run_dir / "roc.png", report["membership"])
    if "loss" in report["canaries"]:
        _plot_canaries(run_dir / "canary-scores.png", report["canaries"])
    return report


def summary_lines(report: dict) -> list[str]:
    lines = [f"audit of {report['run_dir']} (dp-mode {report['dp_mode']}, claimed epsilon {report['claimed_epsilon']})"]
    acc = report["accounting"]
    if "epsilon" in acc:
        lines.append("  accounting: " + ", ".join(f"{k} {v:.3f}" for k, v in acc["epsilon"].items()))
    mia = report["membership"]
    if "attacks" in mia:
        lines.append("  membership AUC: " + ", ".join(f"{k} {a['auc']['value']:.3f}" for k, a in mia["attacks"].items()))
    can = report["canaries"]
    if "epsilon_lower_bound" in can:
        lines.append(f"  canaries: {can['correct']}/{can['guesses']} correct, epsilon >= {can['epsilon_lower_bound']:.3f}")
    leak = report["update_leakage"]["settings"]
    lines.append("  update leakage precision/recall: " +
                 ", ".join(f"{k} {v['precision']:.2f}/{v['recall']:.2f}" for k, v in leak.items()))
    if "messages" in report["messages"]:
        lines.append(f"  messages: {report['messages']['messages']} checked, "
                     f"{len(report['messages']['failures'])} violations")
    lines.append(f"  failures: {len(report['failures'])}" + "".join(f"\n    FAIL {f}" for f in report["failures"]))
    return lines
