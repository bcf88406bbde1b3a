"""Saving and loading pruned models: safetensors weights plus per-layer shapes in config.json.

LLM-Pruner saves pruned models with ``torch.save`` of the whole module (a pickle that
runs code on load and that ``from_pretrained`` cannot read). We save what
``save_pretrained`` saves - safetensors and a config - and record each decoder layer's
own head count, KV-head count and MLP width under ``config.qpruner``, because
transformers' configs only describe uniform layers. Loading builds a skeleton on the
meta device (nothing allocated), resizes each layer to its recorded shape, and adopts the
safetensors tensors directly, so peak memory is about one copy of the pruned weights.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from qpruner.architecture import (
    LayerShape,
    check_supported,
    config_shape,
    decoder_layers,
    layer_shapes,
    resize_layer,
)
from qpruner.errors import CheckpointError, QPrunerError
from qpruner.models.catalog import resolve_model_source
from qpruner.preflight import refuse_pickle_only

FORMAT_VERSION = 1
CONFIG_KEY = "qpruner"
RECOVERY_FILE = "recovery.json"  # a recovered directory: written by qpruner.lora.export

# Safetensors only, unless the user opted in (``--allow-pickle``): a context setting rather
# than a parameter, because base models are loaded several calls below the command that knows.
_PICKLE_ALLOWED: ContextVar[bool] = ContextVar("qpruner_pickle_allowed", default=False)


@contextmanager
def pickle_allowed(allowed: bool = True) -> Iterator[None]:
    """Within this block, let transformers read ``pytorch_model.bin`` where no safetensors exist."""
    token = _PICKLE_ALLOWED.set(allowed)
    try:
        yield
    finally:
        _PICKLE_ALLOWED.reset(token)


def save_pruned(
    model: nn.Module,
    out_dir: str | Path,
    tokenizer=None,
    extra: dict | None = None,
    max_shard_size: str | int = "5GB",
) -> Path:
    """Save ``model`` (pruned or not) so that :func:`load_pruned` rebuilds it exactly."""
    check_supported(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "layers": [s.to_dict() for s in layer_shapes(model)],
    }
    if extra:
        meta.update(extra)
    setattr(model.config, CONFIG_KEY, meta)
    model.save_pretrained(out, safe_serialization=True, max_shard_size=max_shard_size)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def _read_config(path: Path) -> dict:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path} has no config.json; not a saved model directory")
    try:
        return json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {exc}") from exc


def _read_tensors(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index} is corrupt: {exc}") from exc
        files = [path / f for f in sorted(set(weight_map.values()))]
    else:
        refuse_pickle_only(path)  # a pruned checkpoint is never read from a pickle, opt-in or not
        raise CheckpointError(f"{path} has no model.safetensors (or sharded index)")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"weight shard missing: {f}")
        try:
            tensors.update(load_file(str(f), device=str(device)))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"cannot read {f}: {exc}") from exc
    return tensors


def is_pruned_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file() and CONFIG_KEY in _read_config(p)


def load_pruned(
    path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned` (per-layer shapes honoured)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"model directory not found: {path}")
    raw = _read_config(path)
    meta = raw.get(CONFIG_KEY)
    if not isinstance(meta, dict) or "layers" not in meta:
        raise CheckpointError(f"{path}/config.json has no '{CONFIG_KEY}.layers' entry; not saved by qpruner")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was saved by a newer qpruner (format {meta['format_version']} > {FORMAT_VERSION})"
        )
    try:
        config = AutoConfig.from_pretrained(path)
    except (ValueError, KeyError, OSError) as exc:
        raise CheckpointError(f"cannot read the config in {path}: {exc}") from exc
    shapes = [LayerShape.from_dict(d) for d in meta["layers"]]
    if len(shapes) != config.num_hidden_layers:
        raise CheckpointError(
            f"{path}: config has {config.num_hidden_layers} layers but records {len(shapes)} layer shapes"
        )
    dtype = dtype or getattr(config, "dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    check_supported(model)
    for layer, shape in zip(decoder_layers(model), shapes, strict=True):
        resize_layer(layer, shape)
    tensors = _read_tensors(path, device)
    _adopt(model, tensors, path, dtype, device)
    model.eval()
    return model


def _adopt(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path, dtype, device) -> None:
    """Check ``tensors`` against the skeleton and make them the model's parameters."""
    expected = model.state_dict()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    missing = [k for k in expected if k not in tensors and not (tied and k == "lm_head.weight")]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{path}: weights do not match the recorded layer shapes ({what})")
    for k, t in tensors.items():
        if tuple(t.shape) != tuple(expected[k].shape):
            raise CheckpointError(
                f"{path}: tensor {k} has shape {tuple(t.shape)} "
                f"but the config records {tuple(expected[k].shape)}"
            )
    tensors = {k: (t.to(dtype) if t.is_floating_point() else t) for k, t in tensors.items()}
    model.load_state_dict(tensors, strict=False, assign=True)
    if tied:
        model.tie_weights()
    # Non-persistent buffers (rotary inverse frequencies) are not in the file and are
    # still on the meta device: rebuild the modules that own them on the real device.
    for name, module in list(model.named_modules()):
        if any(b.is_meta for b in module.buffers(recurse=False)):
            if "rotary" not in type(module).__name__.lower():
                raise QPrunerError(f"cannot materialise buffers of {name} ({type(module).__name__})")
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            with torch.device(device):
                fresh = type(module)(config=model.config)
            setattr(parent, attr, fresh.to(device))
    leftovers = [n for n, p in model.named_parameters() if p.is_meta]
    if leftovers:
        raise CheckpointError(f"{path}: no weights for {leftovers[:3]}")


def stored_layer_shapes(source: str | Path) -> list[LayerShape] | None:
    """Layer shapes from a local directory's config alone (no weights read), else None.

    Lets callers reject impossible settings before spending minutes loading a large model.
    """
    path = Path(resolve_model_source(str(source))).expanduser()
    if not (path / "config.json").is_file():
        return None
    raw = _read_config(path)
    if isinstance(raw.get(CONFIG_KEY), dict) and "layers" in raw[CONFIG_KEY]:
        return [LayerShape.from_dict(d) for d in raw[CONFIG_KEY]["layers"]]
    try:
        return [config_shape(SimpleNamespace(**raw))] * int(raw["num_hidden_layers"])
    except (AttributeError, KeyError, TypeError, ValueError):
        return None  # not a LLaMA-layout config; loading will say so


def load_tokenizer(path_or_id: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve_model_source(str(path_or_id)))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load a tokenizer from {path_or_id}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_base_model(
    source: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """Load a pruned qpruner directory, a HF model directory, or a hub model id.

    Recovered directories (base + adapter) are :func:`qpruner.loader.load_model`'s: they need
    ``qpruner.lora``, which builds on this module.
    """
    from transformers import AutoModelForCausalLM

    src = resolve_model_source(str(source))  # a catalog name or a GGUF file: a checkpoint dir
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; expected a model directory")
        if CONFIG_KEY in _read_config(path):  # also a clear error for a directory without config.json
            return load_pruned(path, dtype=dtype, device=device)
        refuse_pickle_only(path, allow_pickle=_PICKLE_ALLOWED.get())
    elif src.startswith((".", "/", "~")) or src.count("/") > 1:
        raise CheckpointError(f"model directory not found: {src}")
    # None (opted in): transformers takes safetensors where present and the pickle otherwise.
    kwargs: dict = {"dtype": dtype or "auto", "use_safetensors": None if _PICKLE_ALLOWED.get() else True}
    if str(device) != "cpu":
        kwargs["device_map"] = str(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path) if path.exists() else src, **kwargs)
    except SafetensorError as exc:
        raise CheckpointError(f"cannot load model {src!r}: corrupt safetensors file ({exc})") from exc
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot load model {src!r}: {_first_line(exc)}") from exc
    check_supported(model)
    model.eval()
    return model
