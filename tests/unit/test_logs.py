"""Each log record printed once: no library's basicConfig gives the root logger a second console handler."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

# A fresh interpreter (pytest's own handlers on the root logger would hide the problem): the RDP
# accountant's Poisson path logs through absl, whose first call runs logging.basicConfig().
SCRIPT = """
import logging, sys
if sys.argv[1].startswith("app"):
    import server.app  # what the ServerApp's process imports first
if sys.argv[1] == "app-then-opacus":
    import opacus.utils.module_utils  # a DP run imports Opacus later, lazily: its basicConfig must add nothing
from flwr.common.logger import log
from common.privacy.server_accounting import dpfedavg_epsilon
dpfedavg_epsilon(noise_multiplier=0.5, num_sampled=60, population=200, rounds=2, delta=1 / 200, sampling="poisson")
log(logging.INFO, "fedseqrec: round 1/1 marker")
logging.getLogger("some.library").warning("a library warning")
"""


def _output(mode: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout + done.stderr


def test_a_flower_record_is_printed_once_after_absl_logs_under_poisson_accounting():
    bare = _output("bare")  # the problem this guards against is real: without the app's set-up, twice
    assert bare.count("fedseqrec: round 1/1 marker") == 2 and "INFO:flwr:fedseqrec: round 1/1 marker" in bare
    for mode in ("app", "app-then-opacus"):
        app = _output(mode)
        assert app.count("fedseqrec: round 1/1 marker") == 1, mode
        assert app.count("a library warning") == 1, mode  # other loggers' warnings still reach the console


def test_the_server_app_starts_without_opacus_dp_accounting_or_matplotlib():
    """~2 s of imports (Opacus pulls torch.distributed, dp-accounting scipy.signal) that a run without
    DP never uses, and ~0.4 s of pyplot that a run uses only to draw at its end, paid by every
    ServerApp process; they are imported where they are needed."""
    unused = ("opacus", "dp_accounting", "matplotlib")
    check = f"import sys, server.app; print(sorted(m for m in {unused!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
