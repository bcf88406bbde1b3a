"""Command-line flags taken from the config dataclasses: one source for a flag's name, type,
default, choices and help.

A config field declares its flag as peft does, ``ratio: float = field(default=0.2,
metadata={"help": "..."})``; :func:`add_config_flags` turns it into ``--ratio`` and
:func:`config_from_args` builds the config back from the parsed flags, so no default is
written twice. Metadata keys: ``help``, ``choices``, ``flag`` (a name other than
``--field-name``), ``repeat`` (a list given by repeating the flag rather than by commas).

The fields are read from the class's *source* with :mod:`ast`, not by importing it: the
config modules import torch (their packages need it), and ``qpruner --help`` must answer at
once. Defaults must therefore be literals, names of module-level literal constants, or
``default_factory`` of an empty container; ``tests/test_cli.py`` checks that what is read
here equals :func:`dataclasses.fields` of the imported class, so the two cannot drift.
"""

from __future__ import annotations

import argparse
import ast
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # src/qpruner
_EMPTY = {"list": list, "dict": dict, "set": set, "tuple": tuple}
_NO_DEFAULT = object()


@dataclass(frozen=True)
class ConfigField:
    """One dataclass field as a flag sees it."""

    name: str
    annotation: str  # as written, e.g. "float | None"
    default: Any
    help: str = ""
    choices: tuple | None = None
    flag: str | None = None
    repeat: bool = False

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default where it says something: not for None, False, an empty list,
    or a help text that already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS or default in ([], ()):
            return text
        if "default" in text or action.option_strings == [] or "%(default)" in text:
            return text
        if isinstance(default, list | tuple):
            return f"{text} (default: {','.join(map(str, default))})"
        return text + " (default: %(default)s)"


def _source_of(module: str) -> Path:
    parts = module.split(".")
    if parts[0] != PACKAGE_ROOT.name:
        raise ValueError(f"{module}: only qpruner's own config modules can be read")
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _constants(tree: ast.Module) -> dict[str, Any]:
    """Module-level ``NAME = <literal>`` assignments, for choices named by a constant."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return out


def _value(node: ast.expr, consts: dict[str, Any], where: str) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        if isinstance(node, ast.Name) and node.id in consts:
            return consts[node.id]
        raise ValueError(f"{where}: {ast.unparse(node)} is not a literal a flag can show") from None


def _from_field_call(call: ast.Call, consts: dict, where: str) -> tuple[Any, dict]:
    """The default and metadata of ``field(default=..., default_factory=..., metadata=...)``."""
    kw = {k.arg: k.value for k in call.keywords}
    default: Any = _NO_DEFAULT
    if "default" in kw:
        default = _value(kw["default"], consts, where)
    elif "default_factory" in kw:
        factory = kw["default_factory"]
        default = _EMPTY[factory.id]() if isinstance(factory, ast.Name) and factory.id in _EMPTY else factory
    meta = {}
    if isinstance(kw.get("metadata"), ast.Dict):
        for k, v in zip(kw["metadata"].keys, kw["metadata"].values, strict=True):
            meta[_value(k, consts, where)] = _value(v, consts, where)
    return default, meta


@functools.cache
def read_config(target: str) -> dict[str, ConfigField]:
    """The fields of ``"package.module:ClassName"``, read from its source (nothing imported).

    A default that is not a literal (a factory building another config) is kept as its AST
    node: such a field can have no flag, but :func:`factory_defaults` reads its keywords.
    """
    module, _, name = target.partition(":")
    tree = ast.parse(_source_of(module).read_text(encoding="utf-8"))
    consts = _constants(tree)
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
    if cls is None:
        raise ValueError(f"{target}: no class {name} in {module}")
    out: dict[str, ConfigField] = {}
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        annotation, where = ast.unparse(node.annotation), f"{target}.{node.target.id}"
        if annotation.startswith("ClassVar"):
            continue
        meta: dict = {}
        if node.value is None:
            default = _NO_DEFAULT
        elif isinstance(node.value, ast.Call) and getattr(node.value.func, "id", None) == "field":
            default, meta = _from_field_call(node.value, consts, where)
        else:
            default = _value(node.value, consts, where)
        choices = meta.get("choices")
        out[node.target.id] = ConfigField(
            node.target.id,
            annotation,
            default,
            help=meta.get("help", ""),
            choices=tuple(choices) if choices is not None else None,
            flag=meta.get("flag"),
            repeat=bool(meta.get("repeat", False)),
        )
    return out


def factory_defaults(target: str, name: str) -> dict[str, Any]:
    """Keyword defaults of a nested config built by ``default_factory=lambda: Cls(k=v, ...)``
    (or ``lambda: adjust(Cls(k=v, ...))``, read through the one wrapping call): how a command
    whose config embeds another (``RunConfig.train``) shows that config's defaults."""
    node = read_config(target)[name].default
    body = node.body if isinstance(node, ast.Lambda) else None
    if isinstance(body, ast.Call) and not body.keywords and len(body.args) == 1:
        body = body.args[0]
    if not isinstance(body, ast.Call):
        return {}
    return {k.arg: ast.literal_eval(k.value) for k in body.keywords if k.arg}


def _split(item: Callable[[str], Any], container: type) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            return container(item(x.strip()) for x in text.split(",") if x.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {item.__name__} values, got {text!r}"
            ) from exc

    parse.__name__ = f"comma-separated {item.__name__}"
    return parse


_SCALARS: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str}


def converter(annotation: str) -> Callable[[str], Any] | None:
    """The argparse ``type`` for an annotation; None for ``bool`` (a switch)."""
    kinds = [t.strip() for t in annotation.split("|") if t.strip() != "None"]
    base = kinds[0] if kinds else "str"
    if base == "bool":
        return None
    if base in _SCALARS:
        return _SCALARS[base]
    for prefix, container in (("list[", list), ("tuple[", tuple)):
        if base.startswith(prefix):
            item = base[len(prefix) : -1].split(",")[0].strip()
            if item in _SCALARS:
                return _split(_SCALARS[item], container)
    raise ValueError(f"no flag type for annotation {annotation!r}")


def _fields_key(target: str) -> str:
    return "_flags_" + target.rpartition(":")[2]


def add_config_flags(
    parser: argparse.ArgumentParser,
    target: str,
    *,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    defaults: dict[str, Any] | None = None,
    rename: dict[str, str] | None = None,
) -> None:
    """Add a flag for each field of ``target`` (``"qpruner.x.y:Config"``) to ``parser``.

    A field has a flag when it declares ``metadata={"help": ...}`` (others are internal);
    ``only``/``exclude`` pick among them; ``defaults`` replaces declared defaults (a command that
    embeds the config with other defaults, read with :func:`factory_defaults`); ``rename``
    maps a field to another flag name. :func:`config_from_args` builds the config from them.
    """
    spec = read_config(target)
    skip = set(exclude)
    names = list(only) if only is not None else [n for n, f in spec.items() if f.help and n not in skip]
    defaults, rename = defaults or {}, rename or {}
    dests: dict[str, str] = {}
    for name in names:
        f = spec[name]
        option = rename.get(name, f.option)
        dest = option.lstrip("-").replace("-", "_")
        default = defaults.get(name, f.default)
        if default is _NO_DEFAULT or isinstance(default, ast.AST):
            raise ValueError(f"{target}.{name} has no literal default to give its flag")
        kind = converter(f.annotation)
        kwargs: dict[str, Any] = {"dest": dest, "help": f.help, "default": default}
        if kind is None and default:  # a switch that is on by default: the flag turns it off
            option, kwargs["action"] = "--no-" + option.removeprefix("--"), "store_false"
            kwargs["help"] = f"turn off: {f.help}"
        elif kind is None:
            kwargs["action"] = "store_true"
        elif f.repeat:
            kwargs.update(action="append", default=list(default or []), metavar=name.split("_")[0].upper())
        else:
            kwargs.update(type=kind, choices=f.choices)
            if getattr(kind, "__name__", "").startswith("comma-separated"):
                kwargs["metavar"] = "A,B,..."
        parser.add_argument(option, **kwargs)
        dests[name] = dest
    known = parser.get_default(_fields_key(target)) or {}
    parser.set_defaults(**{_fields_key(target): {**known, **dests}})


def config_from_args(cls: type, args: argparse.Namespace, **fixed: Any):
    """An instance of ``cls`` from the flags :func:`add_config_flags` added for it, plus ``fixed``.

    Only those flags are read, so two configs in one command never take each other's values
    (``run``'s ``--micro-batch`` is the training one, not the calibration one).
    """
    dests = getattr(args, _fields_key(f":{cls.__name__}"), {}) or {}
    known = {f.name for f in fields(cls)}
    values = {name: getattr(args, dest) for name, dest in dests.items() if name in known}
    return cls(**{**values, **fixed})
