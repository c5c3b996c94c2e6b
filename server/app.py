"""Flower ServerApp: read the run config once, hand it to the federation loop."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import RunConfig
from common.logs import one_console_handler
from server.federation import run_federation

# Each Flower record once on the console: our root handler first, so that Opacus' and absl's
# basicConfig, whenever a DP run imports them, add none (Opacus is not imported here: ~1 s that a
# run without DP does not pay).
one_console_handler()
app = ServerApp()


# Flower's in-memory grid (simulation) looks for replies every 0.1 s: ~0.05 s of every round went
# to waiting, a tenth of a main-job round. A look every 10 ms costs the server next to nothing.
REPLY_POLL_SECONDS = 0.01


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig.from_flat(context.run_config)
    if hasattr(grid, "pull_interval"):  # the simulation's InMemoryGrid only
        grid.pull_interval = min(grid.pull_interval, REPLY_POLL_SECONDS)
    run_federation(grid, config)
