"""Read what a run folder holds into plain data for the report (no HTML here).

A run folder is read as its commands wrote it: `config.json`, `metrics.jsonl` (one row per round
or epoch), `summary.json` (a federation) or `metrics.json` (a centralized training), and, when
present, `inputs.json`, `privacy.json` / `privacy.md`, `audit.json` / `audit.md` and the audit's
plots, `preprocessing.json`, `init-model.json`. What every finished run has is required (a folder
without it is not a finished run, or was written by an older version: a FedSeqRecError in one
line); what only some runs have is optional and the report says when it is absent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import FedSeqRecError, brief
from common.run_files import JSON_OBJECT, SCHEMAS, RoundRow, check_json, read_json

AUDIT_PLOTS = ("roc.png", "canary-scores.png")


@dataclass
class RunData:
    """One run folder's contents; files the run did not write are None."""

    run_dir: Path
    kind: str  # "federated" or "centralized"
    config: dict  # flat run config
    rows: list[dict]  # metrics.jsonl
    summary: dict  # summary.json (federated) or metrics.json (centralized)
    inputs: dict | None = None
    privacy: dict | None = None
    privacy_md: str | None = None
    audit: dict | None = None
    audit_md: str | None = None
    audit_plots: dict[str, bytes] = field(default_factory=dict)
    preprocessing: dict | None = None
    init_model: dict | None = None
    label: str = ""

    @property
    def top_k(self) -> int:
        return int(self.config.get("top-k", 10))

    @property
    def step(self) -> str:
        """What a row of metrics.jsonl is: a round or an epoch."""
        return "round" if self.kind == "federated" else "epoch"

    @property
    def dp(self) -> bool:
        return self.config.get("dp-mode", "none") != "none"


def gather(run_dirs: list[Path]) -> list[RunData]:
    """Every run, each labelled by the shortest distinct tail of its path."""
    if not run_dirs:
        raise FedSeqRecError("no run folder given; pass one or more out-dirs of finished runs")
    runs = [read_run(Path(run_dir)) for run_dir in run_dirs]
    for run, label in zip(runs, _labels([r.run_dir for r in runs])):
        run.label = label
    return runs


def read_run(run_dir: Path) -> RunData:
    if not run_dir.exists():
        raise FedSeqRecError(f"{run_dir}: no such run folder; pass the out-dir of a finished fedseqrec run")
    if not run_dir.is_dir():
        raise FedSeqRecError(f"{run_dir}: not a folder; pass the out-dir of a finished fedseqrec run")
    config = _json(run_dir / "config.json")
    if config is None:
        raise FedSeqRecError(
            f"{run_dir}: no config.json, so not a fedseqrec run folder; pass the out-dir of a finished run"
        )
    if (run_dir / "summary.json").exists():
        kind, summary = "federated", _json(run_dir / "summary.json")
    elif (run_dir / "metrics.json").exists():
        kind, summary = "centralized", _json(run_dir / "metrics.json")
    else:
        raise FedSeqRecError(
            f"{run_dir}: no summary.json (a federation) or metrics.json (a training): the run has not finished, "
            "or an older fedseqrec wrote it; finish it (the same command resumes a federation) or run it again"
        )
    rows = _jsonl(run_dir / "metrics.jsonl")
    if rows is None:
        raise FedSeqRecError(f"{run_dir}: no metrics.jsonl (the curves); run it again with this version")
    if not isinstance(summary.get("test"), dict):
        raise FedSeqRecError(
            f"{run_dir / ('summary.json' if kind == 'federated' else 'metrics.json')}: no test metrics; "
            "an older fedseqrec or an unfinished run wrote it: run it again with this version"
        )
    run = RunData(run_dir, kind, config, rows, summary)
    run.inputs = _json(run_dir / "inputs.json")
    run.privacy = _json(run_dir / "privacy.json")
    if run.dp and run.privacy is None:
        raise FedSeqRecError(
            f"{run_dir}: a DP run (dp-mode = {config['dp-mode']}) without privacy.json: its privacy statement "
            "is missing (an unfinished run, or an older fedseqrec); finish it or run it again"
        )
    run.privacy_md = _text(run_dir / "privacy.md")
    run.audit = _json(run_dir / "audit.json")
    run.audit_md = _text(run_dir / "audit.md")
    run.audit_plots = {name: (run_dir / name).read_bytes() for name in AUDIT_PLOTS if (run_dir / name).is_file()}
    run.preprocessing = _json(run_dir / "preprocessing.json")
    run.init_model = _json(run_dir / "init-model.json") or summary.get("init_model")
    return run


def _json(path: Path):
    """A run file checked against its schema (common/run_files.py); None when the run has none."""
    if not path.exists():
        return None
    return read_json(path, SCHEMAS.get(path.name, JSON_OBJECT), what="run file")


def _jsonl(path: Path) -> list[dict] | None:
    if not path.exists():
        return None
    rows = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FedSeqRecError(f"{path}: unreadable ({exc}); the run folder is damaged") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as exc:
            reason = brief(exc, 60) if isinstance(exc, ValueError) else "nested too deeply"
            raise FedSeqRecError(f"{path}:{number}: not a JSON line ({reason}); the run folder is damaged") from exc
        if not isinstance(row, dict):
            raise FedSeqRecError(
                f"{path}:{number}: not a JSON object (one round or epoch per line); the run folder is damaged"
            )
        check_json(row, f"{path}:{number}", RoundRow, what="round row")
        rows.append(row)
    return rows


def _text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace") if path.is_file() else None
    except OSError:
        return None


def _labels(paths: list[Path]) -> list[str]:
    """The shortest tails of the paths (folder names, then with parents) that tell the runs apart."""
    parts = [p.resolve().parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{label} ({i + 1})" for i, label in enumerate(str(p) for p in paths)]  # the same folder twice
