"""Stateful fuzzing of the kernel model: random programs with every invariant checked after each
step, differential runs of two presets in lockstep, and replay of the minimal failing program.

The Hypothesis state machine (:mod:`ptesim.fuzz.machine`) is imported on first use, so that the
command line does not pay for Hypothesis unless it fuzzes."""

from typing import TYPE_CHECKING, Any

from ptesim.fuzz.program import DiffRunner, Program, Runner, Step, Target

if TYPE_CHECKING:
    from ptesim.fuzz.machine import FuzzResult, Violation, fuzz

_LAZY = ("FuzzResult", "Violation", "fuzz")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from ptesim.fuzz import machine

        return getattr(machine, name)
    raise AttributeError(f"module 'ptesim.fuzz' has no attribute {name!r}")


__all__ = ["DiffRunner", "FuzzResult", "Program", "Runner", "Step", "Target", "Violation", "fuzz"]
