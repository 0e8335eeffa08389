"""Checks at the edge of the engine: JSON files read safely, output paths checked before any work, staged writes.

Modules: `json_files` (one validated reader for geometry and pose JSON:
size, encoding, nesting, finite numbers), `outputs` (every output path of a
command checked before the work starts: not a folder, parent a writable
folder, never an input; files written under a temporary name and moved into
place only when the whole command succeeded). Torch-free.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".json_files": "read_json_object json_depth",
    ".outputs": "Outputs same_file",
})
__all__ = sorted(__getattr__.table)
