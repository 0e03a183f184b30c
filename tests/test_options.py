"""The shared options: one spelling, one type, one help and one default on every command."""

from __future__ import annotations

import argparse

import pytest

from ptesim.cli import build_parser, main
from ptesim.options import DEFAULT_ARCH, OPTIONS, STORE_HOOKS, combinations, varying


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = sub
                out.update({f"{name} {k}": v for k, v in _subparsers(sub).items()})
    return out


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def test_shared_options_are_spelled_and_documented_once() -> None:
    """Every command offering a shared option offers the same flag, type and help; no old spellings."""
    commands = _subparsers(build_parser())
    seen: dict[str, set[str]] = {}
    for name, sub in commands.items():
        flags = _flags(sub)
        assert "--features" not in flags and "--ncpus" not in flags, name
        for dest, opt in OPTIONS.items():
            action = flags.get(opt.flag)
            if action is None or name.startswith("host"):
                continue
            seen.setdefault(dest, set()).add(name)
            assert action.type == opt.type, (name, opt.flag)
            assert action.help is not None and action.help.startswith(opt.help), (name, opt.flag)
            if not opt.per_command_default:
                assert action.default == opt.default, (name, opt.flag)
    for cmd in ("explain", "trace", "wis", "latency", "fuzz"):
        assert cmd in seen["arch"] and cmd in seen["preset"] and cmd in seen["cpu_features"]
    assert {"wis", "latency", "calibrate", "reproduce"} <= seen["profile"]
    assert {"wis", "latency"} <= seen["baseline"]


def test_one_default_arch(capsys: pytest.CaptureFixture[str]) -> None:
    """explain and fuzz build the same default machine; wis prices it with that arch's profile."""
    import json

    assert main(["explain", "--mem", "64K", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["arch"] == DEFAULT_ARCH
    assert main(["fuzz", "--examples", "1", "--steps", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["target"].startswith(DEFAULT_ARCH)


def test_comma_lists_make_the_cartesian_product() -> None:
    """--preset a,b --folio x,y gives four combinations, in option order, with the varying keys."""
    p = argparse.ArgumentParser()
    from ptesim.options import add_options

    add_options(p, "arch", "preset", "folio", "mem", "granule")
    args = p.parse_args(["--preset", "v6.8,v6.9", "--folio", "16K,64K", "--mem", "1M"])
    combos = combinations(args)
    assert [(c.preset, c.folio) for c in combos] == [
        ("v6.8", 16384),
        ("v6.8", 65536),
        ("v6.9", 16384),
        ("v6.9", 65536),
    ]
    assert varying(combos) == ["preset", "folio"]


def test_store_hooks_run_as_an_option_is_parsed() -> None:
    """A hook registered for an option sees each value as argparse stores it."""
    p = argparse.ArgumentParser()
    from ptesim.options import add_options

    add_options(p, "folio")
    seen: list[object] = []

    def hook(
        parser: argparse.ArgumentParser, ns: argparse.Namespace, flag: str | None, value: object
    ) -> None:
        seen.append((flag, value))

    STORE_HOOKS["folio"].append(hook)
    try:
        p.parse_args(["--folio", "16K"])
    finally:
        STORE_HOOKS["folio"].remove(hook)
    assert seen == [("--folio", (16384,))]
