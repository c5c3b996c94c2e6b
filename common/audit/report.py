"""`fedseqrec audit RUN_DIR`: compute every audit that applies to a finished run (`compute_audit`);
`run_audit` also writes audit.json, audit.md, roc.png and canary-scores.png (common.audit.render).
Anything that contradicts the run's privacy claim goes in the "failures" list (the CLI exits
non-zero on failures only with --strict)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.audit.accounting import audit_client_ledgers, audit_ftrl_trees, audit_server_events
from common.audit.canaries import audit_canaries, exposure
from common.audit.membership import membership_inference, sequence_scores
from common.audit.messages import AUDIT_DIR, audit_messages
from common.audit.render import write_audit_files
from common.audit.update_leakage import update_leakage
from common.config import FederationSettings, PrivacySettings, RunConfig
from common.data.canaries import make_canaries
from common.data.load import load_sequence_data
from common.data.partition import partition_users, run_canaries
from common.data.run_inputs import recorded_config
from common.errors import FedSeqRecError
from common.model.checkpoint import load_model
from common.privacy.randomness import REPRODUCIBLE
from common.privacy.releases import unlisted
from common.recipes import leakage_trainings
from common.run_files import CONFIG_FILE, AuditedPrivacyFile, LedgerFile, read_json

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
        flat = read_json(run_dir / "config.json", CONFIG_FILE, what="run config")
    if flat is None:
        raise FedSeqRecError(f"{run_dir}: model.pt has no run_config and there is no config.json")
    config = RunConfig.from_flat(flat, where=f"{run_dir} run config")
    privacy = (
        read_json(run_dir / "privacy.json", AuditedPrivacyFile, what="privacy report")
        if (run_dir / "privacy.json").exists()
        else None
    )
    return model, config, privacy


@dataclass(frozen=True)
class CanaryRun:
    """What decides whether a run's DP claim covers a canary: its seed (which canaries it inserted),
    its DP mode and its model context (a canary longer than one window is several DP samples)."""

    seed: int
    dp_mode: str
    max_len: int


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def _sample(users: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(users, size=min(count, len(users)), replace=False)) if len(users) else users


def _bound_applies_to_users(privacy: dict | None) -> bool:
    return privacy is not None and privacy["unit_of_privacy"].startswith(("user", "client"))


def accounting_section(run_dir: Path, settings: PrivacySettings, privacy: dict | None) -> dict:
    """`settings`: the run's privacy settings; `privacy`: its privacy.json."""
    if privacy is None:
        return {"skipped": "not a DP run (no privacy.json)"}
    if privacy["dp_mode"] == "server" and "dp_ftrl" in privacy:
        section = audit_ftrl_trees(
            privacy["dp_ftrl"]["trees"],
            noise_multiplier=privacy["noise_multiplier"],
            delta=privacy["delta"],
            recorded=privacy["epsilon"],
            adjacency=privacy.get("adjacency"),
            accountant=privacy.get("accountant_name", "rdp"),
        )
        section["failures"] += randomness_failures(run_dir, settings, privacy) + release_failures(run_dir, privacy)
        return section
    if privacy["dp_mode"] == "server":
        section = audit_server_events(
            privacy["server_events"],
            delta=privacy["delta"],
            recorded=privacy["epsilon"],
            adjacency=privacy.get("adjacency"),
            sampling=privacy.get("sampling_kind", "fixed"),
            accountant=privacy.get("accountant_name", "rdp"),
        )
        section["failures"] += randomness_failures(run_dir, settings, privacy) + release_failures(run_dir, privacy)
        return section
    ledgers = {
        p.parent.name: read_json(p, LedgerFile, what="privacy ledger")["history"]
        for p in sorted((run_dir / "client-state").glob("client-*/privacy_ledger.json"))
    }
    if not ledgers:
        return {"skipped": "client-mode run without ledgers in RUN_DIR/client-state (deployed clients keep theirs)"}
    section = audit_client_ledgers(
        ledgers, delta=privacy["delta"], recorded=privacy["epsilon"], accountant=settings.accountant
    )
    section["failures"] += randomness_failures(run_dir, settings, privacy) + release_failures(run_dir, privacy)
    return section


def release_failures(run_dir: Path, privacy: dict) -> list[str]:
    """Everything in the run folder must be in privacy.json's release list (covered, public or
    simulation-only); anything else was released outside the claim."""
    table = privacy.get("releases")
    if table is None:
        return ["privacy.json has no release list: what this run wrote is not classified (a run from before it)"]
    return [f"released outside the claim: {problem}" for problem in unlisted(run_dir, table)]


def randomness_failures(run_dir: Path, settings: PrivacySettings, privacy: dict) -> list[str]:
    """A guarantee rests on noise the adversary cannot redo: a report must say where it came from,
    and a run whose noise was derived from the seed must say so where people read it."""
    source = privacy.get("noise_randomness")
    if source is None:
        return [
            "privacy.json does not say where the DP noise and sampling came from (a run from before "
            "secret noise: its noise was derived from the run seed)"
        ]
    failures = []
    if settings.reproducible_dp_noise and settings.dp_mode == "server" and source != REPRODUCIBLE:
        failures.append(f"the run config asked for reproducible-dp-noise but privacy.json says {source!r}")
    if source == REPRODUCIBLE:
        markdown = (run_dir / "privacy.md").read_text() if (run_dir / "privacy.md").exists() else ""
        if "does NOT hold against anyone who knows the seed" not in markdown:
            failures.append(
                "the DP noise was derived from the run seed and privacy.md does not warn that the "
                "guarantee does not hold against anyone who knows the seed"
            )
    return failures


def membership_section(model, data, partition, privacy, users: int, rng) -> dict:
    if len(partition.holdout) == 0:
        return {"skipped": "the run kept no holdout users (holdout-fraction = 0): no non-members to compare"}
    members = np.concatenate(partition.clients)
    members = members[members < data.num_users]  # real users only; canaries are audited on their own
    chosen, held = _sample(members, users, rng), _sample(partition.holdout, users, rng)
    train = data.train_sequences()
    applies = _bound_applies_to_users(privacy)
    result = membership_inference(
        model,
        [train[u] for u in chosen],
        [train[u] for u in held],
        epsilon=privacy["epsilon"] if applies else None,
        # what the attack proves about users is reported for every run, DP or not
        delta=privacy["delta"] if privacy else 1.0 / data.num_users,
    )
    result["dp_bound_applies"] = applies
    result["failures"] = []
    if applies:
        for name, attack in result["attacks"].items():
            found = attack["epsilon_lower_bound"]
            if found["epsilon"] > privacy["epsilon"]:
                at = found["at"]
                result["failures"].append(
                    f"membership ({name}): epsilon >= {found['epsilon']:.3f} at {found['confidence']:.1%} over "
                    f"{found['thresholds']} thresholds ({at['true_positives']}/{result['members']} members "
                    f"and {at['false_positives']}/{result['nonmembers']} non-members flagged) but the run "
                    f"claims ({privacy['epsilon']:.3g}, {privacy['delta']:.2g})-DP"
                )
    return result


def canary_section(model, fed: FederationSettings, run: CanaryRun, data, privacy, k: int, seed: int) -> dict:
    """`fed`: the run's canary settings; `run`: what decides whether its DP claim covers a canary."""
    if fed.canaries == 0:
        return {"skipped": "the run inserted no canaries (canaries = 0)"}
    canaries = run_canaries(data.num_items, fed, run.seed)
    train = [s[:-2] for s in canaries.sequences]
    loss = sequence_scores(model, train)["loss"]
    delta = privacy["delta"] if privacy else 1.0 / data.num_users
    result = audit_canaries(-loss, canaries.included, k=k or max(1, fed.canaries // 4), delta=delta)
    candidates = make_canaries(data.num_items, EXPOSURE_CANDIDATES, fed.canary_length, seed + 1).sequences
    candidate_loss = sequence_scores(model, [s[:-2] for s in candidates])["loss"]
    exposures = exposure(loss, candidate_loss)
    result.update(
        {
            "loss": loss.tolist(),
            "included_mask": canaries.included.tolist(),
            "exposure": {
                "candidates": EXPOSURE_CANDIDATES,
                "max_possible": math.log2(EXPOSURE_CANDIDATES + 1),
                "mean_included": _mean_or_none(exposures[canaries.included]),
                "mean_excluded": _mean_or_none(exposures[~canaries.included]),
            },
            "failures": [],
        }
    )
    one_sample = run.dp_mode == "server" or fed.canary_length - 2 <= run.max_len + 1
    result["dp_claim_covers_canary"] = privacy is not None and one_sample
    if result["dp_claim_covers_canary"] and result["epsilon_lower_bound"] > privacy["epsilon"]:
        result["failures"].append(
            f"canaries: empirical epsilon lower bound {result['epsilon_lower_bound']:.3f} "
            f"exceeds the claimed epsilon {privacy['epsilon']:.3f}: the DP implementation "
            "or its accounting has a bug"
        )
    return result


def leakage_section(model, trainings, data, partition, users: int, rng, *, noise: float, clip: float, seed: int):
    """`trainings`: the run's local recipe without DP and with DP-SGD at `noise` (`leakage_trainings`)."""
    members = np.concatenate(partition.clients)
    members = members[members < data.num_users]
    sample = _sample(members, users, rng)
    return update_leakage(
        *trainings, data, model.arrays(), sample, noise_multiplier=noise, clipping_norm=clip, seed=seed
    )


def _audited_noise(settings: PrivacySettings, privacy: dict | None) -> float:
    recorded = privacy.get("noise_multiplier") if privacy else None
    return float(recorded if isinstance(recorded, (int, float)) else settings.noise_multiplier)


def compute_audit(
    run_dir: Path, *, canary_guesses: int = 0, users: int = 500, leakage_users: int = 10, seed: int = 0
) -> dict:
    """Every section of the audit of a finished run, as plain data (rendered by common.audit.render)."""
    run_dir = Path(run_dir)
    model, config, privacy = load_run(run_dir)
    config = recorded_config(run_dir, config)  # each input file where the run read it (inputs.json), checked
    data = load_sequence_data(config.data)
    partition = partition_users(data, config.federation, config.train.seed)
    rng = np.random.default_rng(seed)
    canary_run = CanaryRun(seed=config.train.seed, dp_mode=config.privacy.dp_mode, max_len=config.data.max_len)
    noise, clip = _audited_noise(config.privacy, privacy), config.privacy.clipping_norm
    trainings = leakage_trainings(
        config, data.num_items, noise_multiplier=noise, max_grad_norm=config.privacy.max_grad_norm
    )
    report = {
        "run_dir": str(run_dir),
        "dp_mode": config.privacy.dp_mode,
        "claimed_epsilon": privacy["epsilon"] if privacy else None,
        "delta": privacy["delta"] if privacy else None,
        "unit_of_privacy": privacy["unit_of_privacy"] if privacy else None,
        "adjacency": privacy.get("adjacency") if privacy else None,
        "noise_randomness": privacy.get("noise_randomness") if privacy else None,
        "accounting": accounting_section(run_dir, config.privacy, privacy),
        "membership": membership_section(model, data, partition, privacy, users, rng),
        "canaries": canary_section(model, config.federation, canary_run, data, privacy, canary_guesses, seed),
        "update_leakage": leakage_section(
            model, trainings, data, partition, leakage_users, rng, noise=noise, clip=clip, seed=config.train.seed
        ),
    }
    arrays = {k: (list(v.shape), str(v.numpy().dtype)) for k, v in model.arrays().items()}
    report["messages"] = (
        audit_messages(run_dir, arrays)
        if (run_dir / AUDIT_DIR).is_dir()
        else {"skipped": "no recorded messages (run with audit-messages = true)"}
    )
    report["failures"] = [
        f for key in ("accounting", "membership", "canaries", "messages") for f in report[key].get("failures", [])
    ]
    return report


def run_audit(run_dir: Path, **options) -> dict:
    """Compute the audit (`compute_audit` options) and write audit.json, audit.md and its plots."""
    report = compute_audit(run_dir, **options)
    write_audit_files(Path(run_dir), report)
    return report
