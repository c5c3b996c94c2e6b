"""`--ray-address`: a bad or unreachable address is one line before any process starts
(fedseqrec/launch/ray_cluster.py); the cluster itself is tested in tests/e2e/test_ray_cluster.py."""

from __future__ import annotations

import pytest

from common.errors import ConfigError
from fedseqrec.launch.processes import free_port
from fedseqrec.launch.ray_cluster import RayCluster, parse_address, probe, ray_environment


@pytest.mark.parametrize("address", ["head", "head:", ":6379", "head:port", "head:70000", "head:0"])
def test_an_address_that_is_not_host_port_is_one_line(address):
    with pytest.raises(ConfigError, match="not host:port") as error:
        parse_address(address)
    assert "\n" not in str(error.value)


def test_a_ray_client_url_is_refused_with_what_to_give_instead():
    with pytest.raises(ConfigError, match="not a Ray Client ray:// URL"):
        parse_address("ray://head:10001")


def test_host_port_and_ipv6_are_parsed():
    assert parse_address("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert parse_address("[::1]:6379") == ("::1", 6379)


def test_an_address_where_nothing_listens_stops_at_once():
    port = free_port()  # nothing listens there
    with pytest.raises(ConfigError, match=rf"--ray-address 127.0.0.1:{port}: no Ray cluster answers there"):
        probe(f"127.0.0.1:{port}")


def test_without_an_address_ray_starts_a_private_instance():
    # Ray's default would join the cluster a `ray start` on this machine last wrote to /tmp/ray
    assert ray_environment(None) == {"RAY_ADDRESS": "local"}
    cluster = RayCluster("10.0.0.5:6379", nodes=3, cpus=24.0)
    assert ray_environment(cluster) == {"RAY_ADDRESS": "10.0.0.5:6379"}
    assert cluster.actors(4) == 6
