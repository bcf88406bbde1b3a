"""Where text and records come from: local files, ``datasets.save_to_disk`` directories, the hub.

Perplexity text, calibration text and recovery data all accept the same three forms, so a
user who has ``yahma/alpaca-cleaned`` (LLM-Pruner's recovery set) or WikiText on the hub
names it as ``hf:ID[:CONFIG][@SPLIT]`` (``hf:yahma/alpaca-cleaned@train``,
``hf:Salesforce/wikitext:wikitext-2-raw-v1@test``), and an offline machine uses a saved copy.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from qpruner.errors import QPrunerError


def shared_data_candidates(name: str) -> list[Path]:
    """Where a data folder ``name`` (``wikitext-2``, ``zeroshot``) is looked for, in order:
    ``$QPRUNER_DATA/<name>`` when set, else ``shared/data/<name>`` walking up from the working
    directory and then from this package (an editable install inside a checkout finds
    ``../shared`` wherever a command is run from)."""
    if os.environ.get("QPRUNER_DATA"):
        return [Path(os.environ["QPRUNER_DATA"]) / name]
    starts = [Path.cwd().resolve(), Path(__file__).resolve().parent]
    dirs = dict.fromkeys(d for start in starts for d in (start, *start.parents))
    return [d / "shared" / "data" / name for d in dirs]


def find_shared_data(name: str, *, files: Iterable[str]) -> Path | None:
    """The first candidate folder (see :func:`shared_data_candidates`) holding all ``files``."""
    wanted = list(files)
    for folder in shared_data_candidates(name):
        if all((folder / f).is_file() for f in wanted):
            return folder
    return None


def is_dataset_source(source: str | Path) -> bool:
    src = str(source)
    return src.startswith("hf:") or Path(src).is_dir()


def parse_hub_source(source: str) -> tuple[str, str | None, str | None]:
    """``hf:ID[:CONFIG][@SPLIT]`` -> (dataset id, config, split). The id keeps its slash
    (``org/name``: every hub dataset is named so now), so the config needs its own separator."""
    if not source.startswith("hf:") or len(source) == 3:
        raise QPrunerError(f"{source!r}: a hub dataset is named hf:ID[:CONFIG][@SPLIT]")
    spec, _, split = source[3:].partition("@")
    name, _, config = spec.partition(":")
    if not name or name.count("/") > 1:
        raise QPrunerError(f"{source!r}: a hub dataset is named hf:ID[:CONFIG][@SPLIT], ID as org/name")
    return name, config or None, split or None


def open_dataset(source: str | Path, default_split: str):
    """A ``datasets.Dataset`` from ``hf:ID[:CONFIG][@SPLIT]`` or a saved dataset directory."""
    import datasets  # deferred: a heavy import, only needed here

    src = str(source)
    if src.startswith("hf:"):
        name, config, split = parse_hub_source(src)
        try:
            return datasets.load_dataset(name, config, split=split or default_split)
        except Exception as exc:  # hub, network and format errors all mean "cannot read this dataset"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = (
                " (a config goes after ':', as in hf:Salesforce/wikitext:wikitext-2-raw-v1)"
                if "/" in name and config is None
                else ""
            )
            raise QPrunerError(f"cannot load dataset {src!r}: {first}{hint}") from exc
    try:
        ds = datasets.load_from_disk(src)
    except Exception as exc:
        raise QPrunerError(f"{src} is not a text file or a saved dataset: {exc}") from exc
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[default_split] if default_split in ds else next(iter(ds.values()))
    return ds


def load_text(source: str | Path, text_field: str = "text") -> str:
    """Text from a file, a ``datasets.save_to_disk`` directory, or ``hf:ID[:CONFIG][@SPLIT]``.

    Dataset rows are joined with blank lines, as LLM-Pruner does for WikiText/PTB.
    """
    src = str(source)
    path = Path(src)
    if is_dataset_source(src):
        return _join_rows(open_dataset(src, "test"), text_field, src)
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise QPrunerError(f"{path} is not UTF-8 text: {exc}") from exc
    raise QPrunerError(
        f"evaluation text not found: {src} (a file, a saved dataset directory, or hf:ID[:CONFIG][@SPLIT])"
    )


def _join_rows(ds, text_field: str, src: str) -> str:
    if text_field not in ds.column_names:
        raise QPrunerError(f"dataset {src!r} has no column {text_field!r} (columns: {ds.column_names})")
    return "\n\n".join(ds[text_field])


def load_tokens(source: str | Path, tokenizer, text_field: str = "text"):
    """Tokenise text in one piece (perplexity windows and training blocks are cut from the stream)."""
    text = load_text(source, text_field)
    return tokenizer(text, return_tensors="pt", verbose=False).input_ids[0]  # a 1-D torch tensor
