"""GGUF in: a llama.cpp model file as an ordinary safetensors checkpoint directory.

Pretrained weights reach our machines as GGUF files inside packages of the Python package
registry (the hub is out of reach). transformers reads GGUF (``from_pretrained(dir,
gguf_file=NAME)``, with the ``gguf`` package installed) and dequantizes every tensor, but the
model it returns carries a GGUF quantizer and refuses ``save_pretrained``. We therefore copy
its weights into a plain model built from the same config and save that, with the tokenizer
transformers rebuilds from the file's metadata. The result is the stock HF layout every other
qpruner command reads.

Only LLaMA, Mistral and Qwen2 layouts are accepted, checked from the file's
``general.architecture`` before any weight is read, so an unsupported file fails in a second
with one line rather than after minutes of dequantization. Output is written to a temporary
directory beside the target and renamed into place: a failure leaves nothing half-written.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from qpruner.atomic_dir import replace_dir
from qpruner.errors import QPrunerError, UnsupportedModelError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")  # llama.cpp names (Mistral files often say llama)
GGUF_MAGIC = b"GGUF"
SOURCE_FILE = "gguf_source.json"  # written beside the weights: which file they came from
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class GGUFInfo:
    """What the file's header says, read without touching the tensor data."""

    path: Path
    architecture: str
    name: str | None
    tensor_count: int
    file_size: int


def find_gguf(path: str | Path) -> Path:
    """The GGUF file itself, or the single ``.gguf`` inside a directory (a choice is the user's)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise QPrunerError(f"GGUF file not found: {p}")
    if p.is_file():
        return p
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() == ".gguf")
    if not files:
        raise QPrunerError(f"no .gguf file in {p}")
    if len(files) > 1:
        names = ", ".join(f.name for f in files[:5])
        raise QPrunerError(f"{len(files)} .gguf files in {p} ({names}); name the one to use")
    return files[0]


def read_gguf_info(path: str | Path) -> GGUFInfo:
    """Header facts of a GGUF file; a non-GGUF or corrupt file is a one-line :class:`QPrunerError`."""
    p = find_gguf(path)
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise QPrunerError(f"{p} is not a GGUF file (it does not start with the bytes 'GGUF')")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(p, "r")
        fields = reader.fields
        arch_field = fields.get("general.architecture")
        architecture = str(arch_field.contents()) if arch_field is not None else None
        name_field = fields.get("general.name")
        name = str(name_field.contents()) if name_field is not None else None
        tensor_count = len(reader.tensors)
    except Exception as exc:  # the reader raises many types on truncated or garbled files
        raise QPrunerError(f"{p}: corrupt or truncated GGUF file ({type(exc).__name__}: {exc})") from exc
    if not architecture:
        raise QPrunerError(f"{p}: GGUF file without 'general.architecture'; cannot tell what model it holds")
    return GGUFInfo(p, architecture, name, tensor_count, p.stat().st_size)


def check_supported(info: GGUFInfo) -> None:
    if info.architecture not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{info.path.name}: GGUF architecture {info.architecture!r} is not supported; "
            f"qpruner converts {', '.join(SUPPORTED_ARCHITECTURES)}"
        )


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def convert_gguf(
    path: str | Path,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    dtype: str = "float32",
    sha256: str | None = None,
) -> Path:
    """Convert a LLaMA / Mistral / Qwen2 GGUF file (or a directory holding one) to ``out_dir``.

    ``out_dir`` receives ``config.json``, ``model.safetensors``, the tokenizer files and
    ``gguf_source.json``. The weights are stored in ``dtype`` (default float32, which holds
    every dequantized value exactly). ``sha256`` of the file, when the caller already has it,
    saves hashing it again. An existing non-empty ``out_dir`` needs ``overwrite``.
    """
    if dtype not in DTYPES:
        raise QPrunerError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    info = read_gguf_info(path)
    check_supported(info)
    out = Path(out_dir).expanduser()
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise QPrunerError(f"{out} already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        _write_checkpoint(info.path, tmp, dtype)
        source = {**asdict(info), "path": str(info.path), "sha256": sha256 or file_sha256(info.path)}
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=1) + "\n")
        for f in (tmp, *tmp.iterdir()):  # mkdtemp makes the directory private; a checkpoint is not
            os.chmod(f, 0o755 if f.is_dir() else 0o644)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # already gone after a successful rename
    return out


def read_source(checkpoint_dir: str | Path) -> dict | None:
    """The ``gguf_source.json`` of a converted directory, or None if absent or unreadable."""
    try:
        return json.loads((Path(checkpoint_dir) / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _write_checkpoint(src: Path, out: Path, dtype: str) -> None:
    """Dequantize through transformers, re-home the weights in a plain model, save both halves."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    except Exception as exc:  # transformers' GGUF path raises many types on files it cannot map
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise QPrunerError(f"transformers cannot read {src.name}: {type(exc).__name__}: {first}") from exc
    config = copy.deepcopy(loaded.config)
    state = loaded.state_dict()
    del loaded
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the quantizer is what makes save_pretrained refuse
    for key in ("_name_or_path", "_model_name_or_path"):  # the GGUF's general.name, not a loadable path
        if hasattr(config, key):
            delattr(config, key)
    model = _plain_model(config, torch_dtype)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise QPrunerError(
            f"{src.name}: weights do not fit the {type(model).__name__} its config describes "
            f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _plain_model(config, torch_dtype):
    """The architecture without random initialization (every weight is overwritten next)."""
    from transformers import AutoModelForCausalLM

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older or newer layouts: random init only costs time
        return AutoModelForCausalLM.from_config(config, dtype=torch_dtype).eval()
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype).eval()
    model.tie_weights()  # skipped under no_init_weights; untied, lm_head would be saved twice
    return model
