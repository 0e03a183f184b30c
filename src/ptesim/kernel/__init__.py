"""The architecture-independent memory-management model (``mm/``, ``kernel/fork.c``)."""
