"""Stateful fuzzing of the kernel model: random programs with every invariant checked after each
step, differential runs of two presets in lockstep, and replay of the minimal failing program."""

from ptesim.fuzz.machine import FuzzResult, Violation, fuzz
from ptesim.fuzz.program import DiffRunner, Program, Runner, Step, Target

__all__ = ["DiffRunner", "FuzzResult", "Program", "Runner", "Step", "Target", "Violation", "fuzz"]
