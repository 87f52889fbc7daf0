"""Data layer: the paired dataset type, readers for common layouts, image-level splits."""

from stitch.data.dataset import DataError, PairedEmbeddings, Queries
from stitch.data.pairs import Pairs
from stitch.data.readers import load_pairs, load_queries, read_npy_triplet
from stitch.data.splits import kfold_by_image, random_image_split, train_dev_split
from stitch.data.synthetic import make_synthetic

__all__ = [
    "DataError",
    "PairedEmbeddings",
    "Pairs",
    "Queries",
    "kfold_by_image",
    "load_pairs",
    "load_queries",
    "make_synthetic",
    "random_image_split",
    "read_npy_triplet",
    "train_dev_split",
]
