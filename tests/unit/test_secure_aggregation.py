"""SecAgg+ rounds: the server learns only the nodes' weighted mean, and it equals the plain one."""

from __future__ import annotations

import pytest

from common.config import RunConfig
from common.errors import ConfigError

pytestmark = pytest.mark.usefixtures("cache_env")


def test_secure_aggregation_needs_devices_that_clip_themselves():
    with pytest.raises(ConfigError, match="cohort-engine"):
        RunConfig.from_flat({"secure-aggregation": True})
