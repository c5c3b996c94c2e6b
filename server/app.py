"""Flower ServerApp: read the run config once, hand it to the federation loop."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import RunConfig
from common.logs import drop_opacus_root_handler
from server.federation import run_federation

drop_opacus_root_handler()  # each Flower record once on the console
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig.from_flat(context.run_config)
    run_federation(grid, config)
