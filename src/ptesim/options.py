"""The options every model and cost command shares, each defined once.

As drgn registers named argparse types once and every command reuses them, ptesim keeps one table,
:data:`OPTIONS`, of the options that select a model machine and price it::

    --arch --preset --set --cpu-features --granule --folio --mapping --mem --cpus --profile --baseline

Each has one spelling, one named type (``type="size_list"``), one help text and one default; a command
picks the ones that apply with :func:`add_options` and may give its own default only for ``--mem`` and
``--cpus`` (a will-it-scale worker's buffer is not an ``explain`` mapping), and the help says which.

List-valued options (``--arch --preset --granule --folio --mem --cpus``) take a comma list; a
command that sweeps runs the cartesian product (:func:`combinations`), one row per combination.

Checks come in two kinds of hook, both open to other modules:

* :data:`STORE_HOOKS` -- per option, run by argparse as the option is stored (see :class:`StoreShared`):
  ``hook(parser, namespace, option_string, value)``; the place for "given twice" errors;
* :data:`CHECKS` -- run by :func:`validate_options` over the whole parsed namespace, once parsing is
  done: the place for conflicts between options (an arch against a profile's arch).

Parsing stays here; computing is the command's; rendering is :mod:`ptesim.report`.  Nothing here
imports numpy, scipy, matplotlib or simpy, so ``ptesim --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ptesim.arch import ARCHES, CPU_FEATURES
from ptesim.errors import UsageError
from ptesim.units import MODEL_MEM_MAX, format_size, parse_cpu_list, parse_size

if TYPE_CHECKING:
    from ptesim.workloads.scenarios import ModelSpec

#: The architecture every command uses unless told otherwise (or given a profile of another arch).
DEFAULT_ARCH = "arm64"
#: The kernel preset every command uses unless told otherwise.
DEFAULT_PRESET = "v6.9"
#: The profile that prices each arch unless ``--profile`` names another.
DEFAULT_PROFILES: dict[str, str] = {"arm64": "altra", "x86": "x86-host", "riscv": "riscv-generic"}
#: Translation granules (base page sizes) by their sysfs spelling.
GRANULES: dict[str, int] = {"4K": 4096, "16K": 16384, "64K": 65536}
#: How a PMD-sized folio is mapped: by one PMD (the kernel's THP default) or by PTEs.
MAPPINGS = ("pmd", "pte")


# -- named argparse types --------------------------------------------------------------------------


def _bad(message: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(message)


def parse_arch(text: str) -> str:
    """An architecture name: ``x86``, ``arm64`` or ``riscv``."""
    name = text.strip()
    if name not in ARCHES:
        raise _bad(f"unknown arch {name!r}; known: {', '.join(ARCHES)}")
    return name


def parse_preset(text: str) -> str:
    """A kernel preset name (``ptesim presets``)."""
    from ptesim.kernel.config import PRESETS

    name = text.strip()
    if name not in PRESETS:
        raise _bad(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return name


def parse_granule(text: str) -> int:
    """A translation granule: ``4K``, ``16K`` or ``64K`` (bytes)."""
    key = text.strip().upper().removesuffix("B").removesuffix("I")
    if key not in GRANULES:
        raise _bad(f"bad granule {text!r}: one of {', '.join(GRANULES)}")
    return GRANULES[key]


def parse_size_arg(text: str) -> int:
    """A size in bytes: ``64K``, ``2M``, ``1G`` or a byte count."""
    try:
        return parse_size(text, what="size")
    except UsageError as exc:
        raise _bad(str(exc)) from None


def parse_cpus(text: str) -> tuple[int, ...]:
    """CPU counts: ``4``, ``1,8,16`` or ``1-4,8``."""
    try:
        return tuple(parse_cpu_list(text))
    except UsageError as exc:
        raise _bad(str(exc)) from None


def parse_cpu_features(text: str) -> tuple[str, ...]:
    """A comma list of CPU feature names; ``""`` means none.  Checked against the arch later."""
    return tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))


def parse_mapping(text: str) -> str:
    """``pmd`` or ``pte``."""
    name = text.strip().lower()
    if name not in MAPPINGS:
        raise _bad(f"bad mapping {text!r}: one of {', '.join(MAPPINGS)}")
    return name


def parse_flag_override(text: str) -> str:
    """``FLAG=VALUE``: one kernel flag of the preset (checked against the flags and the arch later)."""
    name, sep, _ = text.partition("=")
    if not sep or not name.strip():
        raise _bad(f"bad --set {text!r}: expected FLAG=VALUE")
    return text.strip()


def parse_profile(text: str) -> str:
    """A profile name or a path to a TOML file (loaded when the command prices)."""
    if not text.strip():
        raise _bad("empty profile name")
    return text.strip()


def parse_baseline(text: str) -> str:
    """A preset, or ``nocont``: the same preset with PTE_CONT off."""
    return "nocont" if text.strip() == "nocont" else parse_preset(text)


def comma_list(elem: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    """The list form of a named type: ``"16K,64K"`` -> ``(16384, 65536)``, duplicates dropped."""

    def parse(text: str) -> tuple[Any, ...]:
        parts = [p for p in text.split(",")]
        if not parts or any(not p.strip() for p in parts):
            raise _bad(f"bad list {text!r}: empty element")
        return tuple(dict.fromkeys(elem(p) for p in parts))

    parse.__name__ = f"{elem.__name__}_list"
    return parse


#: Named argparse types (``add_argument(type="size_list")``), registered on every parser that uses them.
TYPES: dict[str, Callable[[str], Any]] = {
    "arch": parse_arch,
    "preset": parse_preset,
    "granule": parse_granule,
    "size": parse_size_arg,
    "cpus": parse_cpus,
    "cpu_features": parse_cpu_features,
    "mapping": parse_mapping,
    "flag_override": parse_flag_override,
    "profile": parse_profile,
    "baseline": parse_baseline,
    "arch_list": comma_list(parse_arch),
    "preset_list": comma_list(parse_preset),
    "granule_list": comma_list(parse_granule),
    "size_list": comma_list(parse_size_arg),
}


def register_types(parser: argparse.ArgumentParser) -> None:
    """Make every named type of :data:`TYPES` known to ``parser``."""
    for name, fn in TYPES.items():
        parser.register("type", name, fn)


# -- the option table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptionDef:
    """One shared option: its flag, named type, default and help."""

    flag: str
    type: str
    default: Any
    help: str
    metavar: str
    #: True when the option takes a comma list that a sweep runs over.
    sweeps: bool = False
    #: ``append`` for options that may be repeated (``--set``).
    append: bool = False
    #: True when a command may declare its own default (the help then says which).
    per_command_default: bool = False

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


OPTIONS: dict[str, OptionDef] = {
    o.dest: o
    for o in (
        OptionDef(
            "--arch",
            "arch_list",
            None,
            f"architecture(s): {', '.join(ARCHES)} (default {DEFAULT_ARCH}, or the arch of --profile)",
            "ARCH[,ARCH]",
            sweeps=True,
        ),
        OptionDef(
            "--preset",
            "preset_list",
            (DEFAULT_PRESET,),
            f"kernel preset(s), see 'ptesim presets' (default {DEFAULT_PRESET})",
            "PRESET[,PRESET]",
            sweeps=True,
        ),
        OptionDef(
            "--set",
            "flag_override",
            None,
            "override one kernel flag of the preset (repeatable; see 'ptesim presets --flags')",
            "FLAG=VALUE",
            append=True,
        ),
        OptionDef(
            "--cpu-features",
            "cpu_features",
            None,
            "CPU features, comma separated ('' for none); default: those of the machine --profile "
            "describes when pricing, else those the preset implies",
            "FEAT[,FEAT]",
        ),
        OptionDef(
            "--granule",
            "granule_list",
            (4096,),
            "translation granule(s) (base page size): 4K, 16K or 64K (arm64 only; default 4K)",
            "SIZE[,SIZE]",
            sweeps=True,
        ),
        OptionDef(
            "--folio",
            "size_list",
            (64 << 10,),
            "anonymous folio size(s), e.g. 4K,64K,2M (default 64K)",
            "SIZE[,SIZE]",
            sweeps=True,
        ),
        OptionDef(
            "--mapping",
            "mapping",
            "pmd",
            "how a PMD-sized folio is mapped: pmd (the THP default) or pte (default pmd)",
            "pmd|pte",
        ),
        OptionDef(
            "--mem",
            "size_list",
            (1 << 20,),
            "size(s) of the populated mapping",
            "SIZE[,SIZE]",
            sweeps=True,
            per_command_default=True,
        ),
        OptionDef(
            "--cpus",
            "cpus",
            (4,),
            "CPU count(s), e.g. 1,8,16 or 1-4",
            "N[,N]",
            sweeps=True,
            per_command_default=True,
        ),
        OptionDef(
            "--profile",
            "profile",
            None,
            "cost profile, a name ('ptesim profiles') or a TOML file (default: "
            + ", ".join(f"{p} for {a}" for a, p in DEFAULT_PROFILES.items())
            + ")",
            "NAME|FILE",
        ),
        OptionDef(
            "--baseline",
            "baseline",
            None,
            "the kernel to compare with: a preset, or 'nocont' for the same preset with PTE_CONT off",
            "PRESET",
        ),
    )
}

#: ``hook(action, namespace, option_string, value)``, run as each shared option is stored; it raises
#: ``argparse.ArgumentError(action, message)`` (one line naming the option) to refuse a value.
StoreHook = Callable[[argparse.Action, argparse.Namespace, str | None, Any], None]


def refuse_repeat(
    action: argparse.Action, namespace: argparse.Namespace, flag: str | None, value: Any
) -> None:
    """A single-valued option given twice is an error, not "the last one wins"."""
    if flag is not None and given(namespace, action.dest):
        raise argparse.ArgumentError(action, "given more than once")


#: Per option (by dest), the hooks run as it is stored; other modules append to these lists.
STORE_HOOKS: dict[str, list[StoreHook]] = {
    dest: [] if opt.append else [refuse_repeat] for dest, opt in OPTIONS.items()
}
#: ``check(namespace)``, run by :func:`validate_options` after parsing; raises :class:`UsageError`.
CHECKS: list[Callable[[argparse.Namespace], None]] = []


class StoreShared(argparse.Action):
    """Store (or, for ``--set``, append) a shared option's value after running its store hooks."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        for hook in STORE_HOOKS.get(self.dest, ()):
            hook(self, namespace, option_string, values)
        given: set[str] = getattr(namespace, "given_options", set())
        given.add(self.dest)
        namespace.given_options = given
        if OPTIONS[self.dest].append:
            items = list(getattr(namespace, self.dest, None) or [])
            items.append(values)
            setattr(namespace, self.dest, items)
        else:
            setattr(namespace, self.dest, values)


def _show_default(opt: OptionDef, default: Any) -> str:
    if isinstance(default, tuple):
        if opt.type in ("size_list",) or opt.dest == "granule":
            return ",".join(format_size(v) for v in default)
        return ",".join(str(v) for v in default)
    return str(default)


def add_options(
    parser: argparse.ArgumentParser,
    *names: str,
    defaults: Mapping[str, str] | None = None,
    notes: Mapping[str, str] | None = None,
) -> None:
    """Add the shared options ``names`` (by dest: ``"arch"``, ``"cpu_features"``...) to ``parser``.

    ``defaults`` gives a command's own default for ``mem`` or ``cpus`` in the option's own syntax
    (``{"mem": "128M"}``); ``notes`` appends a command-specific sentence to an option's help.
    """
    register_types(parser)
    defaults = dict(defaults or {})
    notes = dict(notes or {})
    for name in names:
        opt = OPTIONS[name]
        default = opt.default
        if name in defaults:
            if not opt.per_command_default:
                raise ValueError(f"{opt.flag} has one default for every command")
            default = TYPES[opt.type](defaults.pop(name))
        help_text = opt.help
        if opt.per_command_default:
            help_text += f" (default {_show_default(opt, default)})"
        if name in notes:
            help_text += f"; {notes.pop(name)}"
        parser.add_argument(
            opt.flag,
            dest=opt.dest,
            type=opt.type,
            default=default,
            action=StoreShared,
            metavar=opt.metavar,
            help=help_text,
        )
    if defaults or notes:
        raise ValueError(f"defaults or notes for options not added: {sorted({*defaults, *notes})}")


def given(args: argparse.Namespace, name: str) -> bool:
    """True when the shared option ``name`` was on the command line (not its default)."""
    return name in getattr(args, "given_options", set())


def validate_options(args: argparse.Namespace) -> None:
    """Run every registered cross-option :data:`CHECKS` over a parsed namespace."""
    for check in CHECKS:
        check(args)


# -- from parsed options to model machines ---------------------------------------------------------


@dataclass(frozen=True)
class Combination:
    """One point of a sweep: every shared option with one value."""

    arch: str = DEFAULT_ARCH
    preset: str = DEFAULT_PRESET
    granule: int = 4096
    folio: int = 64 << 10
    mem: int = 1 << 20
    cpus: int = 4
    cpu_features: tuple[str, ...] | None = None
    overrides: tuple[str, ...] = ()
    mapping: str = "pmd"
    profile: str | None = None
    baseline: str | None = None

    def label(self, varying: Iterable[str]) -> dict[str, str]:
        """The values of the ``varying`` fields, spelled as on the command line."""
        out = {}
        for name in varying:
            v = getattr(self, name)
            out[name] = format_size(v) if name in ("granule", "folio", "mem") else str(v)
        return out

    def override_dict(self) -> dict[str, str]:
        """``--set`` as ``{flag: value}``, each flag once and applying to this arch."""
        from ptesim.kernel.config import parse_overrides

        return parse_overrides(list(self.overrides), self.arch)

    def profile_name(self) -> str:
        """The profile that prices this combination: ``--profile`` or the arch's default."""
        return self.profile or DEFAULT_PROFILES[self.arch]

    def model_spec(self, **extra: Any) -> ModelSpec:
        """The :class:`~ptesim.workloads.scenarios.ModelSpec` of this combination (validated)."""
        from ptesim.workloads.scenarios import ModelSpec

        check_combination(self)
        kw: dict[str, Any] = {
            "arch": self.arch,
            "preset": self.preset,
            "folio": self.folio,
            "mem": self.mem,
            "granule": self.granule,
            "cpu_features": None if self.cpu_features is None else frozenset(self.cpu_features),
            "overrides": self.override_dict(),
            "ncpus": self.cpus,
        }
        kw.update(mapping_kwargs(self.mapping, ModelSpec))
        kw.update(extra)
        return ModelSpec(**kw)


#: Fields of :class:`Combination` that a comma list can vary, in table-column order.
SWEEP_FIELDS = ("arch", "preset", "granule", "folio", "mem", "cpus")


def mapping_kwargs(mapping: str, cls: type) -> dict[str, str]:
    """``{"mapping": ...}`` for a spec type that models the choice; ``pte`` is refused until it does."""
    if any(f.name == "mapping" for f in dataclasses.fields(cls)):
        return {"mapping": mapping}
    if mapping != "pmd":
        raise UsageError(f"--mapping {mapping}: the model maps PMD-sized folios by PMD only")
    return {}


def resolve_arches(args: argparse.Namespace) -> tuple[str, ...]:
    """``--arch``, else the arch of ``--profile`` (when given and loadable), else :data:`DEFAULT_ARCH`."""
    arches: tuple[str, ...] | None = getattr(args, "arch", None)
    if arches and given(args, "arch"):
        return arches
    profile = getattr(args, "profile", None)
    if profile:
        from ptesim.cost.profile import load_profile

        return (load_profile(profile).arch,)
    return (DEFAULT_ARCH,)


def combinations(
    args: argparse.Namespace, *, fields: Sequence[str] = SWEEP_FIELDS, grow_mem: bool = False
) -> list[Combination]:
    """Every combination of the comma lists in ``args`` (the cartesian product, in option order).

    Only the shared options the command added take part; the others keep :class:`Combination`'s
    defaults.  With ``grow_mem``, a default ``--mem`` smaller than the folio becomes the folio size.
    Each combination is checked (:func:`check_combination`) before anything runs.
    """
    validate_options(args)
    axes: dict[str, tuple[Any, ...]] = {}
    for name in fields:
        if name == "arch":
            axes[name] = resolve_arches(args)
        elif hasattr(args, name):
            v = getattr(args, name)
            axes[name] = v if isinstance(v, tuple) else (v,)
    common: dict[str, Any] = {}
    if getattr(args, "cpu_features", None) is not None:
        common["cpu_features"] = args.cpu_features
    if getattr(args, "set", None):
        common["overrides"] = tuple(args.set)
    for name in ("mapping", "profile", "baseline"):
        if getattr(args, name, None) is not None:
            common[name] = getattr(args, name)
    out = []
    for values in itertools.product(*axes.values()):
        combo = Combination(**common, **dict(zip(axes, values, strict=True)))
        if grow_mem and not given(args, "mem") and combo.folio > combo.mem:
            combo = dataclasses.replace(combo, mem=combo.folio)
        check_combination(combo)
        out.append(combo)
    return out


def grouped(combos: Sequence[Combination], inner: str) -> list[tuple[Combination, tuple[Any, ...]]]:
    """Combinations that differ only in the field ``inner``, together: each group's first combination
    and its values of ``inner`` in order (a command that computes once per group, e.g. one model run
    priced at every CPU count)."""
    out: dict[Combination, list[Any]] = {}
    for c in combos:
        out.setdefault(dataclasses.replace(c, **{inner: getattr(combos[0], inner)}), []).append(
            getattr(c, inner)
        )
    return [(dataclasses.replace(k, **{inner: v[0]}), tuple(v)) for k, v in out.items()]


def varying(combos: Sequence[Combination]) -> list[str]:
    """The sweep fields that take more than one value across ``combos`` (the table's key columns)."""
    return [f for f in SWEEP_FIELDS if len({getattr(c, f) for c in combos}) > 1]


def single(
    args: argparse.Namespace,
    command: str,
    *,
    fields: Sequence[str] = SWEEP_FIELDS,
    grow_mem: bool = False,
) -> Combination:
    """The one combination of a command that does not sweep; a comma list is a usage error."""
    combos = combinations(args, fields=fields, grow_mem=grow_mem)
    if len(combos) != 1:
        keys = ", ".join(f"--{k}" for k in varying(combos))
        raise UsageError(f"{command} takes one value of {keys}")
    return combos[0]


def only(args: argparse.Namespace, name: str, command: str) -> Any:
    """The one value of the list-valued option ``name`` of a command that takes one."""
    values = getattr(args, name)
    if isinstance(values, tuple):
        if len(values) != 1:
            raise UsageError(f"{command} takes one value of {OPTIONS[name].flag}")
        return values[0]
    return values


def default_profile(args: argparse.Namespace) -> str:
    """``--profile``, else the default profile of :data:`DEFAULT_ARCH`."""
    return getattr(args, "profile", None) or DEFAULT_PROFILES[DEFAULT_ARCH]


def check_combination(c: Combination) -> None:
    """Reject a combination the model cannot build, naming the option at fault."""
    from ptesim.kernel.config import preset

    if c.arch != "arm64" and c.granule != 4096:
        raise UsageError(f"{c.arch} has only a 4K granule, not {format_size(c.granule)}")
    if c.cpu_features is not None:
        unknown = [f for f in c.cpu_features if f not in CPU_FEATURES[c.arch]]
        if unknown:
            raise UsageError(
                f"unknown CPU feature {unknown[0]!r} for {c.arch}; known: {', '.join(CPU_FEATURES[c.arch])}"
            )
    pages = c.folio // c.granule
    if c.folio % c.granule or pages & (pages - 1):
        raise UsageError(
            f"bad --folio {format_size(c.folio)}: must be a power-of-two multiple of the "
            f"{format_size(c.granule)} page"
        )
    if pages == 2:
        raise UsageError(
            f"bad --folio {format_size(c.folio)}: anonymous mTHP has no order-1 size "
            "(THP_ORDERS_ALL_ANON starts at order 2)"
        )
    if c.mem % c.granule:
        raise UsageError(
            f"bad --mem {format_size(c.mem)}: not a multiple of the {format_size(c.granule)} page"
        )
    if c.folio > c.mem:
        raise UsageError(
            f"bad --folio {format_size(c.folio)}: larger than the mapping ({format_size(c.mem)})"
        )
    if not 1 <= c.cpus <= 1024:
        raise UsageError(f"bad --cpus {c.cpus}: between 1 and 1024")
    if c.mem > MODEL_MEM_MAX:
        raise UsageError(
            f"bad --mem {format_size(c.mem)}: the model maps at most {format_size(MODEL_MEM_MAX)}"
        )
    if c.overrides:
        preset(c.preset).with_overrides(c.override_dict())
    pmd = pmd_size(c.arch, c.granule)
    if c.folio > pmd:
        raise UsageError(f"bad --folio {format_size(c.folio)}: larger than the PMD size {format_size(pmd)}")


def pmd_size(arch: str, granule: int) -> int:
    """Bytes one PMD entry maps with this granule (the page-table geometry's ``pmd_size``)."""
    from ptesim.kernel.pgtable import GEOMETRY_4K, GEOMETRY_16K, GEOMETRY_64K

    geometry = {4096: GEOMETRY_4K, 16384: GEOMETRY_16K, 65536: GEOMETRY_64K}[granule]
    return geometry.pmd_size
