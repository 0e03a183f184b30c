"""The hardware model: CPUs with ASIDs and per-CPU TLBs, and the architectural effect of every
invalidation instruction."""
