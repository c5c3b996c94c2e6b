"""Federations: cross-silo quality, time and memory, and the cohort engine's cross-device throughput."""
