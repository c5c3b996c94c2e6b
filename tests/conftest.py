"""Shared test set-up: nothing but the thread count."""

import torch

# The tests use tiny models: one intra-op thread is fastest, and avoids oversubscribing small CI machines.
torch.set_num_threads(1)
