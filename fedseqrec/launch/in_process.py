"""Flower's simulation engine with the ClientApp run in this process instead of in Ray actors.

Everything else is Flower's own: the LinkState, the InMemoryGrid the ServerApp talks to, the engine's
message queues, the node contexts, the ClientApp with its mods. Only the worker pool differs: one
worker that calls the ClientApp here, on a copy of each message and context made by pickling, as Ray
would ship them to an actor (a ClientApp that changed its input must not change the engine's copy).
No Ray instance starts, so a small run begins in about a second instead of 10-15 (Ray's processes
and each actor's import of the ClientApp): what the tests' many tiny federations pay most.

Clients run one at a time: a tiny run gains nothing from parallel workers on a small machine, and
one worker keeps a run's order of work, and so its result, the same from run to run. Torch's
intra-op threads are set to the CPUs a client gets (`client_resources.num_cpus`), as a Ray actor's
are: float sums in another order would end a run with another model. The setting is the process's,
so the ServerApp's own work (evaluation) uses as many.

Flower 1.42 always builds a `RayBackend` (`vce_api.start_vce` imports the class at call time);
`in_process_backend()` puts this one in its place for the calling process only.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import types
from collections.abc import Callable, Iterator

from flwr.app import Context, Message
from flwr.clientapp.client_app import ClientApp, ClientAppException, LoadClientAppError
from flwr.server.superlink.fleet.vce.backend import Backend, BackendConfig

RAY_BACKEND_MODULE = "flwr.server.superlink.fleet.vce.backend.raybackend"


class InProcessBackend(Backend):
    """A simulation backend with one worker: the ClientApp, called in this process."""

    def __init__(self, backend_config: BackendConfig) -> None:
        super().__init__(backend_config)
        self._app: ClientApp | None = None
        self._threads = max(1, int(backend_config.get("client_resources", {}).get("num_cpus", 1)))

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        import torch

        torch.set_num_threads(self._threads)
        self._app = app_fn()

    @property
    def num_workers(self) -> int:
        return 1

    def is_worker_idle(self) -> bool:
        return True

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        if self._app is None:
            raise ValueError("the in-process backend was not built: call build() before processing messages")
        message, context = pickle.loads(pickle.dumps((message, context)))  # what crossing to a Ray actor does
        try:
            reply = self._app(message=message, context=context)
        except LoadClientAppError:
            raise
        except Exception as exc:  # as Flower's Ray actor reports it: an error reply, not a crash
            raise ClientAppException(str(exc)) from exc
        return reply, context

    def terminate(self) -> None:
        self._app = None


@contextlib.contextmanager
def in_process_backend() -> Iterator[None]:
    """While open, Flower's simulation engine in this process builds an `InProcessBackend`."""
    stand_in = types.ModuleType(RAY_BACKEND_MODULE)
    stand_in.RayBackend = InProcessBackend  # the name start_vce imports
    previous = sys.modules.get(RAY_BACKEND_MODULE)
    sys.modules[RAY_BACKEND_MODULE] = stand_in
    try:
        yield
    finally:
        if previous is None:
            sys.modules.pop(RAY_BACKEND_MODULE, None)
        else:
            sys.modules[RAY_BACKEND_MODULE] = previous
