"""The launchers that start Flower, apart from the commands' own code.

A local simulation SuperLink and `flwr run` (`federate`, `fedseqrec federate`), optionally on an
existing Ray cluster (`ray_cluster`); Flower's simulation engine from this process (`simulate`: tests,
benchmarks, `fedseqrec tune`; the ClientApp in Ray actors or, `in_process`, in this process); a
real-process deployment on loopback with TLS and node authentication (`deploy`, `loopback`,
`credentials`); and the process control they share (`processes`: every process they start is tracked
by pid and stopped)."""
