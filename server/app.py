"""Flower ServerApp: read the run config once, hand it to the federation loop."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import RunConfig
from common.logs import one_console_handler
from server.engine_pickup import shorten_message_pickup
from server.federation import run_federation
from server.prompt_grid import PromptGrid

# Each Flower record once on the console: our root handler first, so that Opacus' and absl's
# basicConfig, whenever a DP run imports them, add none (Opacus is not imported here: ~1 s that a
# run without DP does not pay).
one_console_handler()
app = ServerApp()
shorten_message_pickup()  # in a simulation: the engine looks for this run's messages every 5 ms, not 0.1 s


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig.from_flat(context.run_config)
    run_federation(PromptGrid(grid), config)  # replies collected as they come, not on Flower's 0.1 s / 3 s beat
