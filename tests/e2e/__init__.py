"""End-to-end tests: whole simulated federations, loopback deployments, Ctrl-C on real commands.
Every test here is marked slow by its folder (tests/conftest.py)."""
