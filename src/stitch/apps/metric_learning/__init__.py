"""Classic deep metric learning on labelled vectors: siamese / triplet embedding nets, evaluated by
precision@1, MAP@R and kNN classification or regression, with a t-SNE view."""

from stitch.apps.metric_learning.data import LabelledVectors, digits, load_labelled, stratified_split
from stitch.apps.metric_learning.evaluate import knn_accuracy, knn_position_error, map_at_r, precision_at_1
from stitch.apps.metric_learning.train import EmbeddingConfig, EmbeddingNet, embed, train_embedding

__all__ = [
    "EmbeddingConfig",
    "EmbeddingNet",
    "LabelledVectors",
    "digits",
    "embed",
    "knn_accuracy",
    "knn_position_error",
    "load_labelled",
    "map_at_r",
    "precision_at_1",
    "stratified_split",
    "train_embedding",
]
