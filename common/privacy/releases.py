"""Everything a DP run writes, sends or logs, each in one class: covered, public or simulation-only.

A DP guarantee covers what its mechanism releases and what is computed from those releases alone
(post-processing). Anything else a run writes (a file in its folder, a field of its round log or
summary, a field a device sends) is a release too, and must be one of:
- covered: an output of the accounted mechanism, or computed only from such outputs and public data;
- public: data-independent (the operator's settings, accounting of public parameters, constants),
  or data of people who consented to share it (the public cohort);
- simulation-only: exists because a simulator holds every user's data (test metrics on the
  held-out items, the simulator's wall-clock, the audit's analyses); a deployment has no such copy.
This module is the one list. The ServerApp keeps only listed fields in the round log under DP
(`releasable_row`), devices send only listed fields (`device_reply`), privacy.json lists every entry
with its class and reason (`release_table`), and `fedseqrec audit --strict` fails a run folder that
holds anything unlisted (`unlisted`).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass
from pathlib import Path

COVERED, PUBLIC, SIMULATION_ONLY = "covered", "public", "simulation-only"


@dataclass(frozen=True)
class Release:
    name: str  # a file pattern in the run folder, or a field name
    kind: str  # COVERED, PUBLIC or SIMULATION_ONLY
    why: str


def _r(name: str, kind: str, why: str) -> Release:
    return Release(name, kind, why)


def _private(config) -> bool:
    return config.privacy.dp_mode != "none"


def _poisson(config) -> bool:
    return config.federation.cohort_engine and config.federation.user_sampling == "poisson"


def _mechanism(config) -> str:
    if config.privacy.dp_mode == "client":
        return "each device's DP-SGD (its own ledger)"
    return "the server's noised aggregate of every round (the run's ledger)"


def _selection(config) -> str:
    if config.federation.public_fraction > 0:
        return "the round whose model ranks the public cohort's validation items best (public data)"
    return "the last round's model (no selection on protected users' data)"


def run_files(config) -> list[Release]:
    """The files a DP run may hold in its folder (patterns relative to it)."""
    mechanism = _mechanism(config)
    sim = "written by the simulator, which holds every user's data; a deployment has no such file"
    return [
        _r("config.json", PUBLIC, "the operator's settings, fixed before any data is read"),
        _r("inputs.json", SIMULATION_ONLY, "where the simulator's copies of the inputs are, with fingerprints"),
        _r(
            "checkpoint.pt",
            COVERED,
            f"global models released by {mechanism}, the server optimiser's state (computed "
            "from them), the round log below and the privacy ledger (public parameters)",
        ),
        _r("model.pt", COVERED, f"one global model released by {mechanism}: {_selection(config)}"),
        _r("metrics.jsonl", PUBLIC, "the round log: only the fields listed under 'round log' are written"),
        _r("summary.json", PUBLIC, "only the fields listed under 'summary' are written"),
        _r("privacy.json", PUBLIC, "the accounting of public parameters, and this list"),
        _r("privacy.md", PUBLIC, "privacy.json, for reading"),
        _r("epsilon.png", PUBLIC, "epsilon per round, from the ledger"),
        _r("validation.png", PUBLIC, "the public cohort's validation curve (written only when there is one)"),
        _r("init-model.json", PUBLIC, "how a public init model was fitted to the catalogue"),
        _r("public-model.pt", PUBLIC, "the model pretrained on public data only (public cohort, public corpus)"),
        _r("pretrain.json", PUBLIC, "pretraining on public data: sources, sizes, loss and public validation"),
        _r("STOP", PUBLIC, "the operator's stop request"),
        _r(
            "*.log",
            PUBLIC,
            "the console's records: the round line carries only the round log's fields; "
            "Flower's records count messages per node",
        ),
        _r("report.html", PUBLIC, "a view of the files listed here, each section under its class"),
        _r("client-state/*/privacy_ledger.json", SIMULATION_ONLY, f"each simulated device's ledger; {sim}"),
        _r("message-audit/*.jsonl", SIMULATION_ONLY, "the audit's record of reply structures (no values)"),
        _r("audit.json", SIMULATION_ONLY, "the auditor's attacks, which use held-out and protected users' data"),
        _r("audit.md", SIMULATION_ONLY, "audit.json, for reading"),
        _r("roc.png", SIMULATION_ONLY, "the membership attacks' ROC curves"),
        _r("canary-scores.png", SIMULATION_ONLY, "the canary audit's scores"),
        _r("curves.png", PUBLIC, "plots of the round log's released fields"),
    ]


def round_log_fields(config) -> dict[str, Release]:
    """The fields of a round-log row (metrics.jsonl, the checkpoint's history) a DP run may write."""
    fields = [
        _r("round", PUBLIC, "the round number"),
        _r("epsilon", PUBLIC, "the ledger after this round (public parameters)"),
        _r("clip", COVERED, "adaptive clipping's C, learned from the accounted noisy count"),
        _r("validation", PUBLIC, "ranking of the public cohort's validation items (consented, public data)"),
        _r("attempts", PUBLIC, "tries of this round (device availability)"),
        _r("skipped", PUBLIC, "why the round released nothing (device availability)"),
        _r("refused", PUBLIC, "why the round was not released (the ledger's cap)"),
        _r("secure-aggregation", PUBLIC, "the round went through SecAgg+"),
        _r("nodes", PUBLIC, "SuperNodes that computed the round"),
        _r("seconds", SIMULATION_ONLY, "the simulator's wall-clock for the round"),
        _r("train-seconds", SIMULATION_ONLY, "the simulator's wall-clock for training"),
    ]
    if not _poisson(config):  # a fixed-size cohort: m is a setting; who answered is device availability
        fields += [
            _r("sampled", PUBLIC, "clients-per-round, a setting"),
            _r("replied", PUBLIC, "sampled devices that answered (availability; the ledger books it)"),
            _r("failed", PUBLIC, "sampled devices whose reply was an error (availability)"),
            _r("late", PUBLIC, "sampled devices whose reply missed the deadline (availability)"),
            _r("declined", PUBLIC, "devices that declined (their owner's cap on a public epsilon)"),
        ]
    return {f.name: f for f in fields}


def summary_fields(config) -> dict[str, Release]:
    public_cohort = config.federation.public_fraction > 0
    fields = [
        _r("rounds", PUBLIC, "rounds run"),
        _r("best_round", PUBLIC, f"the released round: {_selection(config)}"),
        _r("released_round", PUBLIC, f"the released round: {_selection(config)}"),
        _r("selection", PUBLIC, "how the released round was chosen"),
        _r(
            "validation",
            PUBLIC if public_cohort else SIMULATION_ONLY,
            "the released model on the public cohort's validation items"
            if public_cohort
            else "the released model on the protected users' validation items (the simulator's copy)",
        ),
        _r("test", SIMULATION_ONLY, "the released model on the protected users' test items (the simulator's copy)"),
        _r("metrics_by_group", SIMULATION_ONLY, "test metrics per user group (the simulator's copy)"),
        _r("num_users", PUBLIC, "the population size (delta's denominator)"),
        _r("num_items", PUBLIC, "the catalogue size"),
        _r("public_users", PUBLIC, "the public cohort's size"),
        _r("skipped_rounds", PUBLIC, "rounds that released nothing (availability)"),
        _r("stopped_early", PUBLIC, "why the run ended early"),
        _r("init_model", PUBLIC, "the public init model's fit to the catalogue"),
        _r(
            "public_only",
            SIMULATION_ONLY,
            "the public-only (pretrained) model's test metrics and the released model's paired gain over it, "
            "on the protected users' test items (the simulator's copy)",
        ),
        _r("privacy", PUBLIC, "the privacy statement"),
        _r("wall_seconds_this_process", SIMULATION_ONLY, "the simulator's wall-clock"),
        _r("identify_seconds", SIMULATION_ONLY, "the simulator's wall-clock"),
        _r("round_seconds_total", SIMULATION_ONLY, "the simulator's wall-clock"),
    ]
    if not _poisson(config):
        fields += [
            _r("failed_clients", PUBLIC, "sum of the round log's failed (availability)"),
            _r("late_replies", PUBLIC, "sum of the round log's late (availability)"),
            _r("declined_clients", PUBLIC, "sum of the round log's declined"),
        ]
    return {f.name: f for f in fields}


def reply_fields(config) -> dict[str, Release]:
    """What a device may send in a training reply under the run's DP mode."""
    if config.privacy.dp_mode == "client":
        return {
            f.name: f
            for f in (
                _r("arrays", COVERED, "the weights after DP-SGD (clipped, noised; the device's own ledger)"),
                _r("num-examples", PUBLIC, "always 1: every device weighs the same"),
                _r("unit-weight", PUBLIC, "always 1"),
                _r("epsilon", PUBLIC, "the device's ledger: the public plan times the rounds it took part in"),
                _r("user-level", PUBLIC, "the unit of privacy, fixed by the settings (train-windows)"),
                _r("dp-noise-reproducible", PUBLIC, "whether the simulation asked for replayable noise"),
                _r("declined", PUBLIC, "the device declined: its owner's cap on a public epsilon"),
            )
        }
    seen = "seen by the trusted server only, released only inside the noised sum"
    if config.federation.secure_aggregation:
        seen = "masked: the server learns only the sum over the round's devices, released only inside the noised sum"
    return {
        f.name: f
        for f in (
            _r("arrays", COVERED, f"the clipped update, {seen}"),
            _r("num-examples", PUBLIC, "users on the device: 1 for a real device (the cohort engine checks it)"),
            _r("unit-weight", PUBLIC, "always 1"),
            _r("users", PUBLIC, "users on the device: 1 for a real device"),
            _r("clipped", COVERED, f"whether the update was clipped (adaptive clipping's count), {seen}"),
            _r("declined", PUBLIC, "the device declined (its owner's setting)"),
            _r("refused-slot", PUBLIC, "DP-FTRL: not this device's slot (a public hash of user and tree)"),
            _r("rejected-users", SIMULATION_ONLY, "the simulated hosts' server-side norm check, counted per host"),
            _r("dropped-users", SIMULATION_ONLY, "simulated dropouts"),
            _r("fake-users", SIMULATION_ONLY, "simulated attackers"),
        )
    }


def releasable_row(row: dict, config) -> dict:
    """A round-log row with only what the run may release (everything, without DP)."""
    if not _private(config):
        return row
    allowed = round_log_fields(config)
    return {key: value for key, value in row.items() if key in allowed}


def releasable_summary(summary: dict, config) -> dict:
    if not _private(config):
        return summary
    allowed = summary_fields(config)
    return {key: value for key, value in summary.items() if key in allowed}


def device_reply(metrics: dict, config) -> dict:
    """A device's reply metrics with only the fields its DP mode lets it send (all, without DP)."""
    if not _private(config):
        return metrics
    allowed = reply_fields(config)
    return {key: value for key, value in metrics.items() if key in allowed}


def release_table(config) -> dict:
    """privacy.json's list: every file, round-log field, summary field and reply field, with its class."""

    def rows(items):
        return [asdict(item) for item in items]

    return {
        "files": rows(run_files(config)),
        "round_log": rows(round_log_fields(config).values()),
        "summary": rows(summary_fields(config).values()),
        "device_reply": rows(reply_fields(config).values()),
    }


def unlisted(run_dir: Path, table: dict) -> list[str]:
    """What the run folder holds that privacy.json's release table does not list (empty: nothing)."""
    run_dir = Path(run_dir)
    patterns = [row["name"] for row in table["files"]]
    problems = []
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        name = path.relative_to(run_dir).as_posix()
        if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns):
            problems.append(f"{name}: a file the release list does not name")
    log_fields = {row["name"] for row in table["round_log"]}
    if (run_dir / "metrics.jsonl").exists():
        for number, line in enumerate((run_dir / "metrics.jsonl").read_text().splitlines(), start=1):
            extra = sorted(set(json.loads(line)) - log_fields)
            if extra:
                problems.append(f"metrics.jsonl line {number}: fields {extra} are not in the release list")
    summary_names = {row["name"] for row in table["summary"]}
    if (run_dir / "summary.json").exists():
        extra = sorted(set(json.loads((run_dir / "summary.json").read_text())) - summary_names)
        if extra:
            problems.append(f"summary.json: fields {extra} are not in the release list")
    return problems
