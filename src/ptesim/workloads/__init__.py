"""Workloads run on the model: the scenarios of ``ptesim explain``, will-it-scale fork-and-exit,
and single-process latency operations."""
