"""Host mode: run ptesim's workloads on the real kernel of this machine.

Everything in ptesim that reads or writes ``/sys``, ``/proc`` or tracefs lives in this package:

* :mod:`ptesim.host.sysfs` discovers the transparent-huge-page knobs, saves them before any write,
  applies the settings a measurement needs and restores them on every exit path;
* :mod:`ptesim.host.pagemap` checks through ``/proc/self/pagemap`` and ``/proc/kpageflags`` that a
  buffer is really backed by folios of the size asked for;
* :mod:`ptesim.host.tracing` counts ``tlb:tlb_flush`` events by reason and ``/proc/vmstat`` deltas;
* :mod:`ptesim.host.runner` is the small measuring process (standard library only, so its own
  fork cost stays small); :mod:`ptesim.host.bench` drives it and computes statistics;
* :mod:`ptesim.host.commands` adds ``ptesim host ...`` to the command line.

This module imports nothing, so the measuring process stays lean.
"""
