"""The fast engine: the reference model's own code, run once per distinct PTE table.

A populated mapping of 1 GiB is 512 PTE tables, and almost all of them are the same table up to
which folios (PFNs) they map.  The per-table kernel functions (``copy_pte_range`` at fork,
``zap_pte_range`` at exit) are deterministic functions of that table, of the folios it maps and
of a little context, so the fast engine runs the *reference* function on the first table of each
kind, records everything it did (the primitives it emitted under their call chains, the new PTE
values, the folio fields, RSS and table counters), and *replays* that record on every later table
whose inputs are equal up to folio translation.  Nothing of the kernel's logic is restated here;
a table that is not provably equivalent, or a run whose effects the record cannot express (an
allocation, a TLB entry dropped, a gather flush), simply runs the reference code.

See :mod:`ptesim.fast.memo` and the "Engines" section of docs/design.md.
"""

from ptesim.fast.memo import ENGINES, FastEngine, engine_applies, memoised_table_op

__all__ = ["ENGINES", "FastEngine", "engine_applies", "memoised_table_op"]
