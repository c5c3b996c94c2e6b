"""Benchmarks: one script per measured question, one folder per topic of BENCHMARKS.md (README.md
here lists them with their commands). Their figures are in simulations/results/."""
