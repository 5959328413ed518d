"""Serving benchmarks for neuron_runtime (`python -m benchmarks`, `make bench`).

Protocol (docs/batching-and-inference-api.md §5): models built in code (`neuron_runtime.zoo`), compiled with the
real `compile` path for target `cpu`, served by the real `neuron-runtime serve` in a subprocess, loaded by a load
generator in another subprocess (`benchmarks.loadgen`), loopback only. Everything is reported as a ratio to the
in-process limit: the traced graph called directly at its best batch size on the same core, measured in the same
run before and after the servers.
"""
