"""Privacy: DP cost and utility, user-level DP grids, audits, SecAgg+ cost, server epsilon figures."""
