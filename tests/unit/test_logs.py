"""Each log record printed once: no library's basicConfig gives the root logger a second console handler."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

# A fresh interpreter (pytest's own handlers on the root logger would hide the problem): the RDP
# accountant's Poisson path logs through absl, whose first call runs logging.basicConfig().
SCRIPT = """
import logging, sys
if sys.argv[1] == "app":
    import server.app  # what the ServerApp's process imports first
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
    app = _output("app")
    assert app.count("fedseqrec: round 1/1 marker") == 1
    assert app.count("a library warning") == 1  # other loggers' warnings still reach the console
