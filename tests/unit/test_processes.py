"""The process tracker finds a command's whole tree (one pass over the process table) and stops it."""

from __future__ import annotations

import os
import sys
import time

import psutil

from fedseqrec.launch.processes import ProcessTracker

# A child that starts a grandchild and a great-grandchild, then waits: the tracker must see all three.
TREE = """
import subprocess, sys, time
leaf = "import time; time.sleep(60)"
inner = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {leaf!r}]); time.sleep(60)"
subprocess.Popen([sys.executable, "-c", inner])
time.sleep(60)
"""


def test_tracker_sees_every_descendant_and_stops_them_all(tmp_path):
    tracker = ProcessTracker(poll_seconds=0.1, own_descendants=False)
    try:
        root = tracker.start("tree", [sys.executable, "-c", TREE], tmp_path / "tree.log", dict(os.environ), tmp_path)
        deadline = time.monotonic() + 20
        while len(tracker.alive()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        tree = {root.pid} | {p.pid for p in psutil.Process(root.pid).children(recursive=True)}
        assert len(tree) == 3
        assert tree <= set(tracker.alive())
        assert os.getpid() not in tracker.pids()  # not this process: only what the command started
        tracker.stop(grace=5)
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in tree)
    finally:
        tracker.close(grace=5)


def test_the_loopback_deployment_waits_out_flowers_own_heartbeat_default():
    """restart_node waits out heartbeat intervals before asking whether a killed node is offline: with
    no interval given, that is Flower's default, which a Flower upgrade could change."""
    from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL

    from fedseqrec.launch import loopback

    assert loopback.HEARTBEAT_DEFAULT_INTERVAL == HEARTBEAT_DEFAULT_INTERVAL


def test_the_loopback_deployment_reads_flowers_own_patience_and_admission_line():
    """restart_node sleeps out HEARTBEAT_PATIENCE intervals before asking, and _wait_for_nodes first
    watches each SuperNode's log for the line Flower writes once the SuperLink let it in: a Flower
    upgrade that changed either would make the deployment ask too early or wait for nothing."""
    import inspect

    from flwr.common.constant import HEARTBEAT_PATIENCE
    from flwr.supernode import start_client_internal

    from fedseqrec.launch import loopback

    assert loopback.HEARTBEAT_PATIENCE == HEARTBEAT_PATIENCE
    assert f'"{loopback.NODE_ADMITTED}%s"' in inspect.getsource(start_client_internal)
