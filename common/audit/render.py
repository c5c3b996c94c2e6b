"""Render an audit report (the dict `common.audit.report.compute_audit` returns): audit.json,
audit.md, roc.png, canary-scores.png, and the summary lines the CLI prints. Nothing is computed here
beyond the DP bound curve drawn on the ROC plot."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common.audit.membership import dp_tpr_bound  # noqa: E402


def write_audit_files(run_dir: Path, report: dict) -> None:
    """audit.json, audit.md and the plots the report has data for."""
    run_dir = Path(run_dir)
    (run_dir / "audit.json").write_text(json.dumps(report, indent=2))
    (run_dir / "audit.md").write_text(markdown(report))
    if "curves" in report["membership"]:
        plot_roc(run_dir / "roc.png", report["membership"])
    if "loss" in report["canaries"]:
        plot_canaries(run_dir / "canary-scores.png", report["canaries"])


def plot_roc(path: Path, membership: dict) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, curve in membership["curves"].items():
        auc = membership["attacks"][name]["auc"]["value"]
        ax.plot(np.maximum(curve["fpr"], 1e-4), np.maximum(curve["tpr"], 1e-4), label=f"{name} (AUC {auc:.3f})")
    grid = np.logspace(-4, 0, 200)
    ax.plot(grid, grid, linestyle=":", color="grey", label="chance")
    if "dp_bound" in membership:
        bound = membership["dp_bound"]
        ax.plot(
            grid,
            np.maximum(dp_tpr_bound(grid, bound["epsilon"], bound["delta"]), 1e-4),
            linestyle="--",
            color="black",
            label=f"({bound['epsilon']:.2g}, {bound['delta']:.1e})-DP bound",
        )
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


def plot_canaries(path: Path, canaries: dict) -> None:
    loss, included = np.array(canaries["loss"]), np.array(canaries["included_mask"], dtype=bool)
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(loss.min(), loss.max() + 1e-9, 20)
    ax.hist(loss[included], bins=bins, alpha=0.6, label=f"included ({included.sum()})")
    ax.hist(loss[~included], bins=bins, alpha=0.6, label=f"excluded ({(~included).sum()})")
    ax.set_xlabel("final model's loss on the canary (lower = looks trained on)")
    ax.set_ylabel("canaries")
    ax.set_title(
        f"canaries: {canaries['correct']}/{canaries['guesses']} guesses right, "
        f"epsilon >= {canaries['epsilon_lower_bound']:.2f} (95%)"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict) -> str:
    lines = [
        "# Privacy audit",
        "",
        f"- Run: `{report['run_dir']}`",
        f"- DP mode: {report['dp_mode']}; claimed epsilon: {report['claimed_epsilon']}, "
        f"delta: {report['delta']}; unit: {report.get('unit_of_privacy')}; adjacency: {report.get('adjacency')}",
        f"- DP noise and sampling: {report.get('noise_randomness')}",
        f"- Failures: {len(report['failures'])}",
    ]
    lines += [f"  - **FAIL**: {f}" for f in report["failures"]]
    acc = report["accounting"]
    lines += ["", "## 1. Accounting recomputed", ""]
    if "skipped" in acc:
        lines.append(f"Skipped: {acc['skipped']}")
    else:
        lines.append(
            f"Recorded epsilon {acc['recorded_epsilon']:.4f}; recomputed: "
            + ", ".join(f"{k} {v:.4f}" for k, v in acc["epsilon"].items())
            + "."
        )
        lines.append(f"Method: {acc['method']}")
    mia = report["membership"]
    lines += ["", "## 2. Membership inference on users", ""]
    if "skipped" in mia:
        lines.append(f"Skipped: {mia['skipped']}")
    else:
        lines += [
            f"{mia['members']} members vs {mia['nonmembers']} holdout users; 95% bootstrap intervals.",
            "",
            "| score | AUC | TPR @ 0.1% FPR | TPR @ 1% FPR |",
            "|---|---|---|---|",
        ]
        for name, a in mia["attacks"].items():
            cells = [
                f"{a[m]['value']:.3f} [{a[m]['ci95'][0]:.3f}, {a[m]['ci95'][1]:.3f}]"
                for m in ("auc", "tpr_at_0.001_fpr", "tpr_at_0.01_fpr")
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if "dp_bound" in mia:
            lines.append(f"\nDP bound on TPR: {mia['dp_bound']['tpr_at_fpr']} (roc.png)")
        proven = {k: a["epsilon_lower_bound"] for k, a in mia["attacks"].items() if "epsilon_lower_bound" in a}
        if proven:
            some = next(iter(proven.values()))
            lines.append(
                f"\nEpsilon each attack proves ({some['confidence']:.1%} each over all {some['thresholds']} "
                "thresholds, 95% over both attacks together; Clopper-Pearson on both rates, Bonferroni): "
                + ", ".join(f"{name} **{found['epsilon']:.3f}**" for name, found in proven.items())
                + (
                    f" vs claimed {mia['dp_bound']['epsilon']:.3f}; this, not the bootstrap columns, decides "
                    "pass or fail."
                    if "dp_bound" in mia
                    else " (no user-level claim to test)."
                )
            )
    can = report["canaries"]
    lines += ["", "## 3. Canaries", ""]
    if "skipped" in can:
        lines.append(f"Skipped: {can['skipped']}")
    else:
        lines += [
            f"{can['canaries']} canaries ({can['included']} included); {can['k_in']} guessed IN, "
            f"{can['k_out']} OUT: {can['correct']}/{can['guesses']} correct.",
            f"Empirical epsilon lower bound (95%, delta {can['delta']:.2e}): **{can['epsilon_lower_bound']:.3f}**"
            + (f" vs claimed {report['claimed_epsilon']:.3f}" if report["claimed_epsilon"] is not None else ""),
            f"Exposure (max {can['exposure']['max_possible']:.2f} bits): included "
            f"{can['exposure']['mean_included']}, excluded {can['exposure']['mean_excluded']}",
        ]
    leak = report["update_leakage"]
    lines += [
        "",
        "## 4. Item leakage from one client's update",
        "",
        f"{leak['users']} users; z = {leak['noise_multiplier']}, C = {leak['clipping_norm']}, "
        f"per-sample C = {leak['max_grad_norm']}; "
        f"random guessing precision {leak['random_guess_precision']:.3f}.",
        "",
        "| setting | precision | recall | items predicted |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {v['precision']:.3f} | {v['recall']:.3f} | {v['predicted']:.1f} |"
        for name, v in leak["settings"].items()
    ]
    msg = report["messages"]
    lines += ["", "## 5. Messages clients sent", ""]
    lines.append(
        f"Skipped: {msg['skipped']}"
        if "skipped" in msg
        else f"{msg['messages']} replies in {msg['files']} files ({msg['by_type']}); "
        f"{len(msg['failures'])} violations of the whitelist."
    )
    return "\n".join(lines) + "\n"


def summary_lines(report: dict) -> list[str]:
    lines = [f"audit of {report['run_dir']} (dp-mode {report['dp_mode']}, claimed epsilon {report['claimed_epsilon']})"]
    acc = report["accounting"]
    if "epsilon" in acc:
        lines.append("  accounting: " + ", ".join(f"{k} {v:.3f}" for k, v in acc["epsilon"].items()))
    mia = report["membership"]
    if "attacks" in mia:
        lines.append(
            "  membership AUC: " + ", ".join(f"{k} {a['auc']['value']:.3f}" for k, a in mia["attacks"].items())
        )
        attacks = mia["attacks"].items()
        proven = {k: a["epsilon_lower_bound"]["epsilon"] for k, a in attacks if "epsilon_lower_bound" in a}
        if proven:
            found = ", ".join(f"{k} {v:.3f}" for k, v in proven.items())
            lines.append(f"  membership epsilon >= (95% over both attacks): {found}")
    can = report["canaries"]
    if "epsilon_lower_bound" in can:
        lines.append(
            f"  canaries: {can['correct']}/{can['guesses']} correct, epsilon >= {can['epsilon_lower_bound']:.3f}"
        )
    leak = report["update_leakage"]["settings"]
    lines.append(
        "  update leakage precision/recall: "
        + ", ".join(f"{k} {v['precision']:.2f}/{v['recall']:.2f}" for k, v in leak.items())
    )
    if "messages" in report["messages"]:
        lines.append(
            f"  messages: {report['messages']['messages']} checked, {len(report['messages']['failures'])} violations"
        )
    lines.append(f"  failures: {len(report['failures'])}" + "".join(f"\n    FAIL {f}" for f in report["failures"]))
    return lines
