"""What a command checks before its work starts, so that no work is lost to a bad path.

Outputs used to be checked only when written: ``prune`` failed after scoring, ``finetune`` at
its first checkpoint, ``eval --json`` after computing perplexity. Every command now declares
its inputs and outputs (:class:`Checks`) and the CLI checks them first: inputs exist and are
readable, an output's directory takes a file (a probe, created and removed at once), and an
output is neither the working directory (nor one that contains it) nor an input, which
``--overwrite`` would otherwise move aside or delete.

It also holds the safetensors-only rule: a model or adapter directory whose weights are all
pickles (``pytorch_model.bin``, ``adapter_model.bin``, ``*.pt``) is refused by name, because
loading a pickle can run code; :func:`qpruner.checkpoint.load_base_model` applies it too.
Nothing here imports torch until a model's own configuration has to be read.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from qpruner.data_sources import parse_hub_source
from qpruner.errors import CheckpointError, QPrunerError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class Checks:
    """The flags (argparse destinations) of one command that name its inputs and outputs."""

    models: tuple[str, ...] = ()  # model sources: a local directory is checked in depth
    inputs: tuple[str, ...] = ()  # files or directories read (a list value: each of them)
    out_dir: str | None = None  # the output directory
    out_files: tuple[str, ...] = ()  # output files


def _values(args: argparse.Namespace, names: Iterable[str]) -> list[tuple[str, str]]:
    """(flag, value) for every named destination that was given, lists flattened."""
    out = []
    for name in names:
        value = getattr(args, name, None)
        for v in value if isinstance(value, list | tuple) else [value]:
            if v not in (None, ""):
                out.append(("--" + name.replace("_", "-"), str(v)))
    return out


def run_checks(checks: Checks, args: argparse.Namespace) -> None:
    """Everything ``checks`` names, outputs first (no model configuration is read for them)."""
    models, inputs = _values(args, checks.models), _values(args, checks.inputs)
    sources = [v for _, v in models + inputs]
    for flag, value in _values(args, [checks.out_dir] if checks.out_dir else []):
        check_output(value, flag=flag, inputs=sources)
    for flag, value in _values(args, checks.out_files):
        check_output(value, flag=flag, inputs=sources, is_file=True)
    for flag, value in inputs:
        check_input(value, flag=flag)
    for flag, value in models:
        check_model_source(value, flag=flag, allow_pickle=bool(getattr(args, "allow_pickle", False)))


def _local(source: str, *, model: bool = False) -> Path | None:
    """The path a source names on this machine; None for ``hf:`` datasets and, for models, hub
    ids and catalog names (``org/model``, ``smollm2-135m``), which their loaders resolve."""
    if source.startswith("hf:"):
        return None
    path = Path(source).expanduser()
    if not model or path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        return path
    return None


def check_input(source: str, *, flag: str, model: bool = False) -> None:
    """A local input exists and can be read; a hub dataset name parses."""
    if source.startswith("hf:"):
        try:
            parse_hub_source(source)
        except QPrunerError as exc:
            raise QPrunerError(f"{flag} {exc}") from None
    path = _local(source, model=model)
    if path is None:
        return
    if not path.exists():
        raise QPrunerError(f"{flag} {source}: not found")
    mode = os.R_OK | (os.X_OK if path.is_dir() else 0)
    if not os.access(path, mode):
        raise QPrunerError(f"{flag} {source}: permission denied (cannot read it)")


def check_model_source(source: str, *, flag: str = "--model", allow_pickle: bool = False) -> None:
    """A local model directory is readable, of a supported architecture, and not pickles only."""
    path = _local(source, model=True)
    if path is None:
        return
    check_input(source, flag=flag, model=True)
    if not path.is_dir():
        return  # a GGUF file; other files are refused by the loader, which names what it expected
    refuse_pickle_only(path, allow_pickle=allow_pickle)
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):  # a recovered dir's adapter/, ...
        refuse_pickle_only(sub, allow_pickle=allow_pickle)
    config = path / "config.json"
    if config.is_file():
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (ValueError, UnicodeDecodeError, AttributeError) as exc:
            raise QPrunerError(f"{config} is not valid JSON: {exc}") from exc
        from qpruner.architecture import check_model_type  # imports torch: only once a config is read

        check_model_type(SimpleNamespace(model_type=model_type))


def pickle_only_weights(directory: str | Path) -> list[str]:
    """Names of the pickle weight files in ``directory`` when it holds no safetensors, else []."""
    path = Path(directory)
    if not path.is_dir():
        return []
    names = sorted(p.name for p in path.iterdir() if p.is_file())
    if any(n.endswith(".safetensors") for n in names):
        return []
    return [n for n in names if n.endswith(PICKLE_SUFFIXES)]


def refuse_pickle_only(directory: str | Path, *, allow_pickle: bool = False) -> None:
    """Refuse a directory whose weights are all pickles, naming them, unless the user opted in."""
    pickles = pickle_only_weights(directory)
    if pickles and not allow_pickle:
        shown = ", ".join(pickles[:4]) + (f" and {len(pickles) - 4} more" if len(pickles) > 4 else "")
        raise CheckpointError(
            f"{directory} holds only pickle weights ({shown}); qpruner loads safetensors only, "
            "because loading a pickle can run code. Convert them to safetensors, or pass "
            "--allow-pickle if you trust where they came from"
        )


def check_output(
    path: str, *, flag: str = "--out", inputs: Iterable[str] = (), is_file: bool = False
) -> None:
    """``path`` can be written, and writing (or replacing) it cannot touch the user's cwd or inputs."""
    target = Path(path).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise QPrunerError(
            f"{flag} {path} is the working directory or contains it; name a new directory for the output"
        )
    for source in inputs:
        local = _local(source, model=True)
        if local is None or not local.exists():
            continue
        src = local.resolve()
        if target == src or target in src.parents:
            raise QPrunerError(f"{flag} {path} is or contains the input {source}; name another output")
    if is_file and target.is_dir():
        raise QPrunerError(f"{flag} {path} is a directory; name a file")
    if not is_file and target.exists() and not target.is_dir():
        raise QPrunerError(f"{flag} {path} is a file; name a directory")
    probe_writable(_existing_ancestor(target.parent, flag, path))
    if not is_file and target.is_dir():
        probe_writable(target)  # --resume and --overwrite write inside it


def _existing_ancestor(path: Path, flag: str, given: str) -> Path:
    """The deepest existing directory on the way to ``path`` (where its directories get made)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise QPrunerError(
                    f"{flag} {given}: {candidate} is a file, so no directory can be made there"
                )
            return candidate
    return Path(path.anchor)


def probe_writable(directory: Path) -> None:
    """Create and remove a file in ``directory``: the one sure test (permissions, read-only
    mounts, ACLs, a full disk), leaving nothing behind."""
    try:
        fd, name = tempfile.mkstemp(prefix=".qpruner-probe-", dir=directory)
    except OSError as exc:
        raise QPrunerError(f"cannot write in {directory}: {exc.strerror or exc}") from exc
    os.close(fd)
    os.unlink(name)
