"""Ask a running federation to stop before its next round, through a file in its run folder.

The ServerApp looks for RUN_DIR/STOP before each round; when it is there, the run ends as if it had
reached its last round (best model, test figures, reports), says why in summary.json, and removes
the file, so that the same command resumes the run later. The tuner uses it to prune a federated
trial; a person can use it on a deployment where no signal reaches the ServerApp:
`echo "why" > RUN_DIR/STOP`.
"""

from __future__ import annotations

from pathlib import Path

from common.atomic_files import atomic_write

STOP_FILE = "STOP"


def request_stop(run_dir: Path, reason: str) -> None:
    # whole or absent: the server never reads half a reason
    atomic_write(Path(run_dir) / STOP_FILE, lambda handle: handle.write(reason.strip().encode() + b"\n"))


def take_stop_request(run_dir: Path) -> str | None:
    """The reason (or "no reason given") when a stop was requested, removing the request; else None."""
    path = Path(run_dir) / STOP_FILE
    try:  # whatever a person wrote there, a stop request never crashes the ServerApp
        reason = path.read_bytes().decode("utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None
    path.unlink(missing_ok=True)
    return reason or "no reason given"
