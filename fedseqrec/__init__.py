"""The `fedseqrec` command (`cli.main`, the console script) and the code of its commands.

`cli` parses every subcommand and turns a FedSeqRecError into one line and exit code 2. The commands'
own code: centralized training (`centralized`, `fedseqrec train`), hyper-parameter search (`tune`,
`search_space`), rank-time ensembles (`ensemble`), per-node data files (`deployment_data`,
`fedseqrec partition`). The launchers that start Flower: a local simulation SuperLink (`federate`),
Flower's simulation engine in this process (`simulate`), a real-process deployment on loopback
(`deploy`, `loopback`, `credentials`), and the process control they share (`processes`). The Flower
apps are server/ and client/; what they share is common/; experiments are simulations/."""
