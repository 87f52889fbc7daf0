"""Classic deep metric learning on labelled vectors: an embedding net trained with a pair loss of the loss
registry (siamese / triplet / InfoNCE / SigLIP) and a miner, scored with the retrieval metrics over
class-level relevance (precision@1, MAP@R) and kNN over a gallery index, with a 2-D view."""

from stitch.apps.metric_learning.data import LabelledVectors, digits, load_labelled, stratified_split
from stitch.apps.metric_learning.evaluate import class_relevance, score_space
from stitch.apps.metric_learning.folder import SavedEmbedding, load_embedding
from stitch.apps.metric_learning.run import run_metric_learning
from stitch.apps.metric_learning.train import (
    EmbeddingConfig,
    EmbeddingNet,
    embed,
    embedding_loss,
    embedding_losses,
    train_embedding,
)

__all__ = [
    "EmbeddingConfig",
    "EmbeddingNet",
    "LabelledVectors",
    "SavedEmbedding",
    "class_relevance",
    "digits",
    "embed",
    "embedding_loss",
    "embedding_losses",
    "load_embedding",
    "load_labelled",
    "run_metric_learning",
    "score_space",
    "stratified_split",
    "train_embedding",
]
