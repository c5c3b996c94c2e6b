"""`fedseqrec report RUN_DIR [RUN_DIR ...]`: one self-contained HTML page of what runs did.

`gather` reads the run folders into plain data; `html` (with `svg` and `markdown`) builds the page;
`write_report` checks the output path first and writes the page atomically.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from common.errors import OutputError
from common.report.gather import gather
from common.report.html import render

REPORT_FILE = "report.html"


def default_output(run_dirs: list[Path]) -> Path:
    """RUN_DIR/report.html for one run; ./fedseqrec-report.html for several."""
    return Path(run_dirs[0]) / REPORT_FILE if len(run_dirs) == 1 else Path("fedseqrec-report.html")


def write_report(run_dirs: list[Path], out: Path | None = None) -> Path:
    run_dirs = [Path(r) for r in run_dirs]
    out = Path(out) if out is not None else default_output(run_dirs) if run_dirs else Path(REPORT_FILE)
    check_output_file(out)
    page = render(gather(run_dirs), version=_version())
    tmp = _temporary(out)
    try:
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"--out {out}: cannot write the report ({exc.strerror or exc}); choose another file") from exc
    return out


def check_output_file(out: Path) -> None:
    """A file that can be written: not a folder, in a folder that exists and is writable."""
    if out.is_dir():
        raise OutputError(f"--out {out}: is a folder; name the HTML file to write, e.g. {out / REPORT_FILE}")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"--out {out}: the folder {folder} does not exist; create it or choose another file")
    if not os.access(folder, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise OutputError(f"--out {out}: cannot write the report (no permission); choose another file")
    probe = _temporary(out)
    try:  # root passes access() on a read-only file system: only a write tells
        probe.write_bytes(b"")
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot write the report ({exc.strerror or exc}); choose another file") from exc
    finally:
        probe.unlink(missing_ok=True)


def _temporary(out: Path) -> Path:
    return out.with_name(f".{out.name}.tmp{os.getpid()}")


def _version() -> str:
    try:
        return version("fedseqrec")
    except PackageNotFoundError:
        return ""
