"""Every deliberately broken variant is caught by the fuzzer within the CI budget, by a check
that holds for the unmutated model on the same budget."""

from __future__ import annotations

import json

import pytest

from fuzz_campaigns import MUTANT_BUDGET, SEED, Campaign, results
from ptesim.fuzz import Program, Target
from ptesim.mutants import MUTANTS, mutant, patched


@pytest.mark.fuzz_budget
@pytest.mark.parametrize("name", [n for n, m in MUTANTS.items() if not m.count_only])
def test_mutant_is_caught(name: str) -> None:
    """The mutant is caught within the budget, and the program that caught it passes on the
    clean model (so the check failed because of the mutation)."""
    out = results()[name]
    assert out.check is not None, f"{name} survived {MUTANT_BUDGET} programs"
    assert out.examples <= MUTANT_BUDGET
    assert out.program_json is not None
    prog = Program.from_json(json.loads(out.program_json))
    assert prog.target.mutant == name
    clean = Program(
        Target(prog.target.arch, prog.target.preset, prog.target.granule, prog.target.features), prog.steps
    )
    clean.replay()


@pytest.mark.fuzz_budget
def test_clean_model_passes_the_same_budget() -> None:
    """The unmutated model passes the mutant budget on every target a mutant is hunted on."""
    for t in {m.target for m in MUTANTS.values() if not m.count_only}:
        out = results()[Campaign(t, MUTANT_BUDGET, SEED).key]
        assert out.examples >= MUTANT_BUDGET and out.check is None, (t, out.detail)


def test_at_least_ten_mutants_with_the_historical_ones() -> None:
    """The catalogue has at least ten mutants, including the bugs the contpte series had."""
    assert len(MUTANTS) >= 10
    assert {"v1-access-flags-no-tlbi", "fpb-crosses-folio-end"} <= {
        n for n, m in MUTANTS.items() if m.kind == "historical"
    }


def test_patches_are_restored() -> None:
    """Applying a mutant patches the model only inside its context."""
    import ptesim.kernel.config as config
    import ptesim.kernel.memory as memory

    before = (memory.folio_pte_batch, config.PRESETS["v6.9"])
    with mutant("fpb-crosses-folio-end").applied(), mutant("v1-access-flags-no-tlbi").applied():
        assert memory.folio_pte_batch is not before[0]
        assert config.PRESETS["v6.9"].contpte_access_flags_flush is False
    assert (memory.folio_pte_batch, config.PRESETS["v6.9"]) == before
    with pytest.raises(RuntimeError), patched([(memory, "folio_pte_batch", None)]):
        raise RuntimeError("an error inside the context")
    assert memory.folio_pte_batch is before[0]


@pytest.mark.parametrize("name", [n for n, m in MUTANTS.items() if m.count_only])
def test_count_only_mutant_is_caught_by_its_count_property(name: str) -> None:
    """A bug that changes only counts is invisible to the fuzzer; its count property catches it
    and holds on the unmutated model."""
    m = MUTANTS[name]
    assert m.detect is not None
    assert m.detect() is None
    with m.applied():
        assert m.detect() is not None
