"""One training round through Flower's SecAgg+ (Bell et al. 2020): the server learns only the sum.

Flower 1.42 offers SecAgg+ as a workflow of its legacy API (`SecAggPlusWorkflow`, with
`secaggplus_mod` on the clients). We run it for one round at a time inside our own round loop:
a small legacy strategy hands the workflow this round's nodes and their configs, the nodes mask
their quantised replies pairwise, and the workflow unmasks only the weighted mean (weights = the
users each node trained). Nothing of a single node's reply is ever seen by the server but its
weight (public: 1 user per device, 0 when it declined), so updates are clipped on the devices (the
cohort engine), and DP noise, if any, is added to the sum afterwards
(`server.privacy.PrivacyTracker.private_sum`). The masked vector carries one more array than the
model: the share of clipped users, so that adaptive clipping's count is a sum too.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.common import FitIns
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.server_config import ServerConfig
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from common.config import RunConfig

ARRAY_NAMES = "array-names"  # the legacy protocol carries unnamed arrays; this config entry names them


class _OneRound(LegacyStrategy):
    """Tells the workflow which nodes train with which config, and keeps what it reports back."""

    def __init__(self, configs: dict[int, dict]):
        self.configs = configs
        self.results: list = []
        self.failures: list = []

    def initialize_parameters(self, client_manager):
        return None

    def configure_fit(self, server_round, parameters, client_manager):
        proxies = client_manager.all()
        return [
            (proxies[str(node)], FitIns(parameters, dict(config)))
            for node, config in self.configs.items()
            if str(node) in proxies
        ]

    def aggregate_fit(self, server_round, results, failures):
        self.results, self.failures = results, failures
        return (results[0][1].parameters if results else None), {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


def secure_mean(
    grid: Grid, config: RunConfig, server_round: int, arrays: ArrayRecord, configs: dict[int, dict], timeout: float
) -> tuple[ArrayRecord | None, dict[int, dict], int, float]:
    """(mean of the nodes' replies weighted by their users, node id -> its clear-text weight, failures,
    the clipped share of the round's users) of one SecAgg+ round over the nodes in `configs`."""
    run_id = grid.run.run_id
    context = Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config={})
    fed = config.federation
    names = list(arrays.keys())
    manager = SimpleClientManager()
    for node in configs:
        manager.register(GridClientProxy(node_id=node, grid=grid, run_id=run_id))
    strategy = _OneRound({node: {**entries, ARRAY_NAMES: names} for node, entries in configs.items()})
    legacy = LegacyContext(
        context, config=ServerConfig(num_rounds=server_round), strategy=strategy, client_manager=manager
    )
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
    legacy.state.array_records[MAIN_PARAMS_RECORD] = arrays
    workflow = SecAggPlusWorkflow(
        num_shares=fed.secagg_shares,
        reconstruction_threshold=fed.secagg_threshold,
        clipping_range=fed.secagg_clip_range,
        # weights (users per node) are scaled by 1/max_weight before quantisation:
        # the smallest bound that holds keeps the most precision
        max_weight=float(fed.clients_per_round * (2 if fed.user_sampling == "poisson" else 1)),
        timeout=timeout,
    )
    workflow(grid, legacy)
    if not strategy.results:
        return None, {}, len(configs), 0.0
    mean = list(legacy.state.array_records[MAIN_PARAMS_RECORD].values())
    named = ArrayRecord(
        {
            name: Array(value.numpy().astype(arrays[name].numpy().dtype).reshape(arrays[name].shape))
            for name, value in zip(names, mean)
        }
    )
    clipped_share = float(mean[len(names)].numpy().reshape(-1)[0])  # the masked extra array (client side)
    weights = {proxy.node_id: {"num-examples": fitres.num_examples} for proxy, fitres in strategy.results}
    return named, weights, len(strategy.failures), clipped_share
