"""Differential-privacy accounting and DP-SGD training shared by clients, server and audits."""
