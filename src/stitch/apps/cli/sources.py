"""Where a command's paired data comes from: one file or folder (``--data``), or three ``.npy`` arrays."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stitch.apps.cli.declare import option
from stitch.errors import UsageError

IMAGE_KEY_HELP = "column whose equal values are one image (rows of clip-retrieval/tables/datasets)"


@dataclass(frozen=True)
class DataSource:
    """Paired data as the command line names it; :meth:`load` reads it through :func:`stitch.api.load`."""

    data: str | None = field(
        default=None,
        metadata=option(
            "paired data: .npz (Flickr8k or AML layout), .pt dict, a query/item folder, or a folder on disk "
            "(stitch sharded, clip-retrieval embeddings, Parquet/Arrow tables, Hugging Face datasets)"
        ),
    )
    captions: str | None = field(
        default=None, metadata=option("captions .npy (with --images and --index instead of --data)")
    )
    images: str | None = field(default=None, metadata=option("images .npy"))
    index: str | None = field(default=None, metadata=option("caption->image index .npy (int)"))
    image_key: str | None = field(default=None, metadata=option(IMAGE_KEY_HELP))

    @property
    def name(self) -> str:
        """What the data is called in messages and model cards."""
        return str(self.data or self.captions)

    def load(self) -> Any:
        from stitch import api

        if self.data is None and self.captions is None:
            raise UsageError("give --data FILE, or --captions X.npy --images Y.npy --index Z.npy")
        keyed = {"image_key": self.image_key} if self.image_key else {}
        return api.load(self.data, captions=self.captions, images=self.images, index=self.index, **keyed)
