"""What a path holds, decided in one place: every paired-data format stitch reads, in the order they are
tried, each with the test that recognises it and the reader that opens it.

``load_pairs`` dispatches through :data:`FORMATS`, and ``detect_layout`` asks the same table about the
on-disk layouts only, so a path is never recognised one way by one and another way by the other; a new
format is one entry here plus its reader. Order matters where tests overlap: a ``datasets`` folder holds
Arrow files, so it is tried before a folder of tables. Tests and readers are ``"module:function"`` strings
imported when used (as in :mod:`stitch.registries`), so this table imports no reader and the readers can
consult it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stitch.registries import Entry, Registry, resolve

_D = "stitch.data"
_L = "stitch.data.layouts"
# tags: detect = the test that recognises the format from its path (tried in this order; an npz is opened to
# read its keys); layout = an on-disk embedding layout (stitch.data.layouts), whose rows image_key groups;
# options = whether the reader takes load_pairs' keyword options (a sharded folder was grouped when written)
FORMATS = Registry(
    "data format",
    {
        "query-items": Entry(
            f"{_D}.query_items:read_query_items",
            "a query/item folder (read into memory)",
            {"detect": f"{_D}.query_items:is_query_items_folder"},
        ),
        "sharded": Entry(
            f"{_D}.sharded:open_sharded",
            "a stitch sharded folder (memory-mapped, read on demand)",
            {"detect": f"{_D}.sharded:is_sharded_folder", "options": False},
        ),
        "clip-retrieval": Entry(
            f"{_L}.clip_retrieval:open_clip_retrieval",
            "a clip-retrieval / img2dataset folder (img_emb/, text_emb/, metadata/)",
            {"detect": f"{_L}.clip_retrieval:is_clip_retrieval", "layout": True},
        ),
        "hf-datasets": Entry(
            f"{_L}.hf_datasets:read_hf_datasets",
            "a datasets save_to_disk folder (Dataset or DatasetDict)",
            {"detect": f"{_L}.hf_datasets:is_hf_datasets", "layout": True},
        ),
        "table": Entry(
            f"{_L}.tables:read_table",
            "a Parquet / Arrow table, or a folder of them",
            {"detect": f"{_L}.tables:is_table", "layout": True},
        ),
        "pt": Entry(f"{_D}.readers:read_pt", "a torch .pt dict of tensors", {"detect": f"{_D}.readers:is_pt"}),
        "flickr-npz": Entry(
            f"{_D}.readers:read_flickr_npz",
            "an npz with captions/image_index (Flickr8k style)",
            {"detect": f"{_D}.readers:is_flickr_npz"},
        ),
        "aml-npz": Entry(
            f"{_D}.readers:read_aml_npz",
            "an npz with a captions/label matrix (AML-2025)",
            {"detect": f"{_D}.readers:is_aml_npz"},
        ),
    },
)

#: the on-disk embedding layouts, in the order they are tried
LAYOUTS = tuple(name for name in FORMATS.names() if FORMATS.tag(name, "layout"))


def detect_format(path: str | Path, among: tuple[str, ...] | None = None) -> str | None:
    """The first of :data:`FORMATS` (of ``among`` when given) whose test recognises ``path``; None when
    none does. An ``.npz`` is opened to read its keys, so an unreadable one raises a DataError naming it."""
    path = Path(path)
    for name in FORMATS.names():
        if (among is None or name in among) and resolve(FORMATS.tag(name, "detect"))(path):
            return name
    return None


def open_format(name: str, path: str | Path, **options: Any) -> Any:
    """``path`` opened by the reader of format ``name``, with ``options`` if that reader takes them."""
    reader = FORMATS.get(name)
    return reader(path, **options) if FORMATS.tag(name, "options", True) else reader(path)
