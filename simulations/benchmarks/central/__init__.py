"""Centralized baselines: one `fedseqrec train` per setting, and learning curves side by side."""
