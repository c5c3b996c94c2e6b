"""The `fedseqrec` command (`cli.main`, the console script) and the code of its commands.

`cli` parses every subcommand and turns a FedSeqRecError into one line and exit code 2. The commands'
own code: centralized training (`centralized`, `fedseqrec train`), hyper-parameter search (`tune`,
`search_space`), rank-time ensembles (`ensemble`), per-node data files (`deployment_data`,
`fedseqrec partition`). The launchers that start Flower live in `launch/` (a local simulation
SuperLink, Flower's simulation engine in this process, a Ray cluster, a real-process deployment on
loopback, and the process control they share). The Flower apps are server/ and client/; what they
share is common/; experiments are simulations/."""
