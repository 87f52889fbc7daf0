"""Every vocabulary of stitch, spelled once: model kinds, towers, losses, miners, rescorers, index kinds,
protocols, training tasks.

Each family is a :class:`Registry` of names mapped to ``"module:attribute"`` targets that are imported
only when used, so config validation and the CLI's ``--help`` stay free of torch. Config checks, CLI
choices and error messages all read these keys. Adding a model kind or a loss is one new file plus one
line here (see the README's "Extending stitch").
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from stitch.errors import UsageError


def resolve(target: str):
    """The attribute a ``"module:attribute"`` target names, imported now."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Entry:
    """One name of a family: where its implementation lives, one line of help, and facts others check."""

    target: str
    help: str = ""
    tags: dict = field(default_factory=dict)


class Registry:
    """Names of one family (``family`` is what error messages call them)."""

    def __init__(self, family: str, entries: dict[str, Entry]) -> None:
        self.family = family
        self.entries = dict(entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def check(self, name: str, setting: str | None = None) -> str:
        """``name`` if it is known, else a ValueError naming the setting and the valid names."""
        if name not in self.entries:
            where = setting or self.family
            raise UsageError(f"{where} must be one of {list(self.entries)}, got {name!r}")
        return name

    def entry(self, name: str, setting: str | None = None) -> Entry:
        return self.entries[self.check(name, setting)]

    def tag(self, name: str, key: str, default=None):
        return self.entry(name).tags.get(key, default)

    def get(self, name: str, setting: str | None = None):
        """The implementation behind ``name`` (imported now)."""
        return resolve(self.entry(name, setting).target)

    def help(self) -> str:
        return "; ".join(f"{name}: {entry.help}" for name, entry in self.entries.items() if entry.help)


_T = "stitch.translators"
# tags: task = the training task that owns the loss; losses = loss kinds it accepts; image_space = has
# predictions in the raw image space (submissions); closed_form = fitted, not trained.
_MLP_KEYS = ("hidden", "depth", "dropout", "activation", "standardize_target")
_START_KEYS = ("init", "ridge_alpha")
# config_keys: the model.* settings a kind reads (as sentence-transformers modules declare theirs); any other
# model.* setting given to it (other than its default) is an error naming the kind (see model_has)
MODELS = Registry(
    "model",
    {
        "ridge": Entry(
            f"{_T}.mapped:RidgeTranslator",
            "closed-form ridge map",
            {"task": "translate", "closed_form": True, "config_keys": ("ridge_alpha", "standardize_target")},
        ),
        "procrustes": Entry(
            f"{_T}.mapped:ProcrustesTranslator",
            "closed-form orthogonal map",
            {"task": "translate", "closed_form": True, "config_keys": ("standardize_target",)},
        ),
        "self-learning": Entry(
            f"{_T}.mapped:SelfLearningTranslator",
            "linear map refitted on pseudo-pairs drawn among unpaired pools (semi.*)",
            {
                "task": "translate",
                "closed_form": True,
                "uses_pools": True,
                "config_keys": ("init", "ridge_alpha", "standardize_target"),
            },
        ),
        "mlp": Entry(
            f"{_T}.mapped:MLPTranslator", "MLP into image space", {"task": "translate", "config_keys": _MLP_KEYS}
        ),
        "resmlp": Entry(
            f"{_T}.mapped:ResidualTranslator",
            "residual MLP on a closed-form start",
            {"task": "translate", "config_keys": (*_MLP_KEYS, *_START_KEYS)},
        ),
        "graded": Entry(
            f"{_T}.mapped:GradedTranslator",
            "residual MLP scored as a grader scores a submission (unit raw image)",
            {"task": "translate", "config_keys": (*_MLP_KEYS, *_START_KEYS, "hub_bias"), "folds_hub_bias": True},
        ),
        "dual": Entry(
            f"{_T}.heads:DualEncoder",
            "text and image towers into a shared space",
            {
                "task": "dual",
                "config_keys": (
                    *_MLP_KEYS, "text_tower", "image_tower", "shared_dim", "freeze_image", "momentum",
                    "distill_weight", "distill_temperature",
                ),
            },
        ),
        "set": Entry(
            f"{_T}.set_head:SetPredictionHead",
            "K candidate image embeddings per caption",
            {
                "task": "set",
                "config_keys": (
                    "hidden", "standardize_target", *_START_KEYS, "slots", "slot_dropout", "aggregation",
                    "diversity_weight", "diversity_margin", "global_weight", "global_margin", "mmd_weight",
                    "uniformity_weight",
                ),
            },
        ),
    },
)  # fmt: skip

def model_has(kind: str, setting: str) -> bool:
    """Whether model kind ``kind`` has the setting ``model.<setting>``: one its ``config_keys`` tag lists (or
    ``name``); every setting, for a kind that declares none (a plugin kind is not checked)."""
    has = MODELS.tag(kind, "config_keys", None)
    return has is None or setting == "name" or setting in has


TASKS = Registry(
    "task",
    {
        "translate": Entry(
            "stitch.training.tasks:TranslateTask", "queries vs images", {"losses": ("regression", "pair")}
        ),
        "dual": Entry("stitch.training.tasks:DualTask", "towers + momentum distillation", {"losses": ("pair",)}),
        "set": Entry("stitch.training.tasks:SetTask", "slot sets + set regularisers", {"losses": ("set",)}),
    },
)

TOWERS = Registry(
    "tower",
    {
        "identity": Entry("torch.nn:Identity", "no projection"),
        "linear": Entry(f"{_T}.heads:LinearTower", "one linear layer"),
        "mlp": Entry(f"{_T}.heads:ProjectionMLP", "CLIP-style projection head"),
        "align": Entry(f"{_T}.heads:AlignHead", "wider head with BatchNorm (ALIGN)"),
        "attention": Entry(f"{_T}.heads:AttentionTower", "self-attention over vector pieces"),
        "crossattn": Entry(f"{_T}.heads:CrossAttentionTower", "attention + learnt prototypes of the other side"),
    },
)

ACTIVATIONS = Registry(
    "activation",
    {
        name: Entry(f"torch.nn:{cls}")
        for name, cls in (("gelu", "GELU"), ("relu", "ReLU"), ("silu", "SiLU"), ("tanh", "Tanh"))
    },
)

_L = "stitch.losses"
# kind: regression (needs row-aligned targets), pair (negatives from the batch; a queue can add more), set;
# temperature: the loss has a temperature a schedule can set
LOSSES = Registry(
    "loss",
    {
        "mse": Entry(f"{_L}.regression:MSELoss", "squared error to the image", {"kind": "regression"}),
        "cosine": Entry(f"{_L}.regression:CosineLoss", "1 - cosine to the image", {"kind": "regression"}),
        "infonce": Entry(
            f"{_L}.infonce:InfoNCELoss", "multi-positive symmetric InfoNCE", {"kind": "pair", "temperature": True}
        ),
        "siglip": Entry(f"{_L}.siglip:SigLIPLoss", "sigmoid pairwise loss", {"kind": "pair", "temperature": True}),
        "contrastive": Entry(f"{_L}.metric:ContrastiveLoss", "siamese margin loss", {"kind": "pair"}),
        "triplet": Entry(f"{_L}.metric:TripletMarginLoss", "triplet margin loss", {"kind": "pair"}),
        "set-triplet": Entry(f"{_L}.set_losses:SetTripletLoss", "triplet on Sinkhorn-matched sets", {"kind": "set"}),
        "set-infonce": Entry(f"{_L}.set_losses:SetInfoNCELoss", "InfoNCE on the winner slot", {"kind": "set"}),
    },
)

MINERS = Registry(
    "miner",
    {
        "none": Entry(f"{_L}.miners:no_miner", "every pair the loss forms"),
        "all": Entry(f"{_L}.miners:AllTripletMiner", "every margin-violating triplet"),
        "semihard": Entry(f"{_L}.miners:SemiHardTripletMiner", "negatives farther than the positive, within margin"),
        "hardest": Entry(f"{_L}.miners:BatchHardMiner", "hardest positive and negative per anchor"),
        "distance-weighted": Entry(f"{_L}.miners:DistanceWeightedMiner", "negatives sampled by inverse density"),
    },
)

# the order a training pass visits a shard's captions in (stitch.training.sampling)
SAMPLERS = Registry(
    "sampler",
    {
        "random": Entry("stitch.training.sampling:RandomOrder", "a random permutation of the captions"),
        "grouped": Entry("stitch.training.sampling:GroupedOrder", "whole images: all captions of an image together"),
        "hard": Entry("stitch.training.sampling:HardOrder", "whole images, similar images (k-means) in one batch"),
    },
)

_R = "stitch.retrieval.hubness"
# needs_bank: fitted on a query bank; single_vector: transforms single query vectors (not slot sets);
# beta / k: which run default it takes
RESCORERS = Registry(
    "rerank method",
    {
        "none": Entry(f"{_R}:Rescorer", "plain cosine"),
        "csls": Entry(f"{_R}:CSLS", "cross-domain similarity local scaling", {"needs_bank": True, "k": True}),
        "is": Entry(f"{_R}:InvertedSoftmax", "inverted softmax over the bank", {"needs_bank": True, "beta": True}),
        "qbnorm": Entry(f"{_R}:QBNorm", "inverted softmax for hub-led queries", {"needs_bank": True, "beta": True}),
        "dbnorm": Entry(f"{_R}:DBNorm", "query- and gallery-bank softmax", {"needs_bank": True, "beta": True}),
        "center": Entry(f"{_R}:Center", "centre both sides", {"needs_bank": True, "single_vector": True}),
        "whiten": Entry(f"{_R}:Whiten", "ZCA-whiten the queries", {"needs_bank": True, "single_vector": True}),
    },
)

_I = "stitch.retrieval.index_kinds"
# each entry is the kind itself (stitch.retrieval.index_kinds.IndexKind): its settings, their defaults and
# bounds, the faiss.index_factory string they make, its search-time parameters, whether it trains
INDEX_KINDS = Registry(
    "index kind",
    {
        "exact": Entry(f"{_I}:EXACT", "chunked exact search, no dependency"),
        "flat": Entry(f"{_I}:FLAT", "FAISS exact inner product (Flat)"),
        "ivf": Entry(f"{_I}:IVF_FLAT", "FAISS IVF-Flat (IVF{nlist},Flat)"),
        "hnsw": Entry(f"{_I}:HNSW_GRAPH", "FAISS HNSW graph (HNSW{m})"),
        "ivfpq": Entry(f"{_I}:IVF_PQ", "FAISS IVF-PQ + exact re-rank (IVF{nlist},PQ{m}x{nbits}np,RFlat)"),
    },
)

PROTOCOLS = Registry(
    "protocol",
    {
        "full": Entry("stitch.retrieval.evaluate:full_protocol", "every query against the whole gallery"),
        "kaggle100": Entry(
            "stitch.retrieval.evaluate:kaggle_protocol", "the true image + 99 seeded random others", {"candidates": 100}
        ),
        "aml2025": Entry(
            "stitch.retrieval.evaluate:aml2025_protocol",
            "the AML-2025 Kaggle evaluation: whole gallery, recall@1/5/10/20, MRR cut at rank 20",
            {"cutoff": 20},
        ),
    },
)

# the part of a text-encoder spec before ":" (``minilm`` and ``st:PATH`` run on sentence-transformers)
TEXT_ENCODERS = Registry(
    "text encoder",
    {
        "st": Entry("stitch.encoders.text:TextEncoder", "sentence-transformers (PyTorch): minilm or st:/path"),
        "onnx": Entry("stitch.encoders.onnx_text:OnnxTextEncoder", "the same model on ONNX Runtime: onnx:minilm"),
        "static": Entry("stitch.encoders.static:StaticTextEncoder", "a distilled static encoder: static:/path"),
    },
)

# the part of an image-encoder spec before ":"
IMAGE_ENCODERS = Registry(
    "image encoder",
    {
        "tflite": Entry("stitch.encoders.image:TFLiteEncoder", "a TFLite model: tflite:/path/model.tflite"),
        "hf": Entry("stitch.encoders.image:HFVisionEncoder", "a Hugging Face vision model: hf:/path[#cls|#mean]"),
    },
)

PROJECTIONS = Registry(
    "projection",
    {name: Entry("stitch.outputs.plots:project_2d") for name in ("tsne", "pca", "umap")},
)

#: what an image-space prediction holds: the raw-space direction a grader ranks by, or the regression point
IMAGE_TARGETS = ("direction", "point")
