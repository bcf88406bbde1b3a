"""Command line: a thin layer over the Python API. Errors a user caused print one line.

Each command is a module named after it (``add_parser(sub)`` and ``run(args)``); this module
assembles the parser, checks what a command will read and write before it starts
(:mod:`qpruner.preflight`), and is the one place where an expected failure becomes
``qpruner: error: <one line>``. Building the parser imports no torch, so ``--help`` answers
at once; a command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path

from qpruner.cli import eval as eval_cmd
from qpruner.cli import finetune, plan, prune, reference
from qpruner.cli import run as run_cmd
from qpruner.cli.flags import HelpFormatter
from qpruner.cli.models import MODEL_COMMANDS, add_model_parsers
from qpruner.cli.search import SEARCH_COMMANDS, add_search_parsers
from qpruner.errors import QPrunerError
from qpruner.preflight import Checks, run_checks

_OWN = (prune, eval_cmd, reference, plan, finetune, run_cmd)
# What the commands defined elsewhere read and write, checked here like the others'.
_OTHER_CHECKS = {
    "search": Checks(
        models=("model",), inputs=("train_data", "eval_data", "calib_data", "task_dir"), out_dir="out"
    ),
    "report": Checks(out_dir="out"),
    "import": Checks(out_dir="out"),
    "fetch": Checks(),
}
# Errors of the machine, not of qpruner: reported in one line wherever they happen.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class Parser(argparse.ArgumentParser):
    """Help with defaults shown, and a usage error in the same one-line form as every other."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message: str):
        self.exit(2, f"qpruner: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="qpruner", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _OWN:
        module.add_parser(sub)
    add_search_parsers(sub)
    add_model_parsers(sub)
    return parser


def commands() -> dict[str, tuple[Callable[[argparse.Namespace], None], Checks]]:
    own = {module.__name__.rpartition(".")[2]: (module.run, module.CHECKS) for module in _OWN}
    other = {**SEARCH_COMMANDS, **MODEL_COMMANDS}
    return {**own, **{name: (fn, _OTHER_CHECKS.get(name, Checks())) for name, fn in other.items()}}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler, checks = commands()[args.command]
    made = _missing_dirs(getattr(args, checks.out_dir, None) if checks.out_dir else None)
    try:
        run_checks(checks, args)
        _run(handler, args)
    except KeyboardInterrupt:
        _remove_if_empty(made)
        print("qpruner: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        _remove_if_empty(made)
        message = user_error(exc, args, checks)
        if message is None or os.environ.get("QPRUNER_DEBUG", "") not in ("", "0"):
            raise  # a bug in qpruner (or debugging asked for): the traceback is what helps
        print(f"qpruner: error: {message}", file=sys.stderr)
        return 1
    return 0


def _missing_dirs(out: str | None) -> list[Path]:
    """The output directory and those of its parents that do not exist yet, deepest first."""
    if not out:
        return []
    path = Path(out).expanduser().absolute()
    return [p for p in (path, *path.parents) if not p.exists()]


def _remove_if_empty(made: list[Path]) -> None:
    """A command that failed leaves no empty output directory behind (never removes content)."""
    for path in made:
        try:
            path.rmdir()
        except OSError:
            return  # not empty, or gone: stop going up


def _run(handler: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> None:
    if getattr(args, "no_progress", False):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if getattr(args, "allow_pickle", False):
        from qpruner.checkpoint import pickle_allowed

        with pickle_allowed():
            return handler(args)
    return handler(args)


def user_error(exc: BaseException, args: argparse.Namespace, checks: Checks | None = None) -> str | None:
    """The one-line message for a failure the user can act on; None for a bug in qpruner.

    Ours (:class:`QPrunerError`), a corrupt safetensors file, and the file system refusing:
    permissions, a full disk or a read-only mount anywhere; a missing file, or a directory
    where a file was expected, on a path the command's flags name (``checks``) or the cache.
    """
    if isinstance(exc, QPrunerError):
        return str(exc)
    checks = checks or Checks()
    safetensors = sys.modules.get("safetensors")
    if safetensors is not None and isinstance(exc, safetensors.SafetensorError):
        return f"corrupt or unreadable safetensors file: {exc}"
    if not isinstance(exc, OSError):
        return None
    where = f": {exc.filename}" if exc.filename else ""
    message = " ".join(f"{exc.strerror or exc}{where}".split())
    if exc.errno in _ENVIRONMENT_ERRNOS:
        return message
    user_file = isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError | FileExistsError)
    if user_file and exc.filename and _on_user_path(str(exc.filename), args, checks):
        return message
    return None


def _on_user_path(filename: str, args: argparse.Namespace, checks: Checks) -> bool:
    """Whether ``filename`` is or is inside a path the flags name, or beside an output (the
    temporary siblings outputs are written to), or in the cache."""

    def given(names) -> list[str]:
        values = [getattr(args, n, None) for n in names if n]
        return [str(x) for v in values for x in (v if isinstance(v, list) else [v]) if x]

    cache = os.environ.get("QPRUNER_CACHE") or str(Path.home() / ".cache" / "qpruner")
    inputs = given(checks.models + checks.inputs) + [cache]
    outputs = given((checks.out_dir, *checks.out_files))
    target = Path(filename).expanduser().resolve()
    for value in inputs + outputs:
        path = Path(value).expanduser().resolve()
        if target == path or path in target.parents:
            return True
    return any(Path(v).expanduser().resolve().parent == target.parent for v in outputs)
