"""Robustness: dropouts, attackers, item promotion, and SIGKILLs at random moments."""
