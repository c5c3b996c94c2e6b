"""Flower ServerApp: read the run config once, hand it to the federation loop."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import RunConfig
from common.logs import drop_opacus_root_handler
from server.federation import run_federation

drop_opacus_root_handler()  # each Flower record once on the console
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
