"""What each kind of nearest-neighbour index is, one object a kind (``stitch.registries.INDEX_KINDS`` points
each name at one): its settings and their defaults (bounded by :data:`PARAM_BOUNDS`), the FAISS
``index_factory`` string its settings make, the build-time and search-time FAISS parameters it sets, whether
it trains on a sample, and how many bytes it holds.

``exact`` is no FAISS index: a chunked torch matmul over the stored unit vectors (``store = "vectors"``), and
it has no factory string. Every other kind is built by ``faiss.index_factory(d, factory, inner product)``;
the string is stored in ``index.json`` and, when read back, must equal the one the kind and its settings
make. Importing this module imports neither torch nor FAISS.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from stitch.bounds import Bound, check

# inclusive bounds of every index setting (one name means one thing in every kind): FAISS takes
# out-of-range values and overflows or eats the memory
PARAM_BOUNDS = {
    "nlist": Bound(1, 1 << 20, integer=True),
    "nprobe": Bound(1, 1 << 20, integer=True),
    "m": Bound(2, 512, integer=True),
    "ef_construction": Bound(1, 1 << 16, integer=True),
    "ef_search": Bound(1, 1 << 16, integer=True),
    "nbits": Bound(1, 16, integer=True),
    "refine_factor": Bound(0, 1000, integer=True),
}


class IndexKind:
    """One kind of index. ``defaults`` names its settings; a kind that ``trains`` fits k-means on a sample
    before vectors are added (:meth:`centroids` says how many centroids its largest k-means fits)."""

    defaults: Mapping[str, int] = MappingProxyType({})
    store = "faiss"  # how the index is kept: a FAISS index, or the unit vectors ("vectors")
    trains = False

    def check_settings(self, name: str, settings: Mapping, error: type[Exception]) -> None:
        """Refuse a setting this kind does not have, or a value outside its bound."""
        unknown = set(settings) - set(self.defaults)
        if unknown:
            raise error(f"unknown parameter(s) {sorted(unknown)} for {name}; valid: {sorted(self.defaults)}")
        for key, value in settings.items():
            check(f"index parameter {key}", value, PARAM_BOUNDS[key], error)

    def check_dim(self, dim: int, settings: Mapping, error: type[Exception]) -> None:
        """Refuse a dimension this kind cannot index with these settings (every one by default)."""

    def factory(self, settings: Mapping) -> str | None:
        """The ``faiss.index_factory`` string of the index these settings build (None: not a FAISS index)."""
        return None

    def centroids(self, settings: Mapping) -> int:
        """Centroids of the largest k-means its training fits (0: it does not train)."""
        return 0

    def fit_to_sample(self, settings: Mapping, size: int, per_centroid: int) -> dict:
        """The settings the build chooses (and records in the index's ``meta``) when its training sample
        holds ``size`` rows and k-means wants ``per_centroid`` of them a centroid: a kind lowers there
        what the sample cannot carry."""
        return {}

    def built_from(self, settings: Mapping, meta: Mapping, error: type[Exception]) -> dict:
        """The settings an index was built with: ``settings`` with what the build chose (recorded in its
        ``meta``) put back, each choice checked against its bound."""
        return dict(settings)

    def prepare(self, index, settings: Mapping) -> None:
        """Set the build-time attributes of a new FAISS index (before any vector is added)."""

    def search_parameters(self, settings: Mapping) -> dict[str, float]:
        """The ``faiss.ParameterSpace`` parameters a search of this index uses."""
        return {}

    def nbytes(self, n: int, dim: int, settings: Mapping) -> int:
        """About how many bytes of RAM the built index holds (vectors, codes, ids, graph links)."""
        return 4 * n * dim


class Exact(IndexKind):
    """Chunked exact search over the unit vectors (torch), no FAISS."""

    store = "vectors"


class Flat(IndexKind):
    """FAISS exact inner product."""

    def factory(self, settings: Mapping) -> str:
        return "Flat"


class HNSW(IndexKind):
    """FAISS HNSW graph: ``m`` links a vector (twice that on level 0)."""

    defaults = MappingProxyType({"m": 32, "ef_construction": 200, "ef_search": 128})

    def factory(self, settings: Mapping) -> str:
        return f"HNSW{int(settings['m'])}"

    def prepare(self, index, settings: Mapping) -> None:
        index.hnsw.efConstruction = int(settings["ef_construction"])

    def search_parameters(self, settings: Mapping) -> dict[str, float]:
        return {"efSearch": int(settings["ef_search"])}

    def nbytes(self, n: int, dim: int, settings: Mapping) -> int:
        return 4 * n * dim + 4 * n * 2 * int(settings["m"])  # level 0 holds 2m links a vector; upper levels are few


class IVF(IndexKind):
    """FAISS IVF-Flat: ``nlist`` k-means lists over an exact inner-product quantizer, ``nprobe`` searched."""

    defaults = MappingProxyType({"nlist": 1024, "nprobe": 32})
    trains = True

    def factory(self, settings: Mapping) -> str:
        return f"IVF{int(settings['nlist'])},Flat"

    def centroids(self, settings: Mapping) -> int:
        return int(settings["nlist"])

    def fit_to_sample(self, settings: Mapping, size: int, per_centroid: int) -> dict:
        return {"nlist": max(1, min(int(settings["nlist"]), size // per_centroid))}

    def built_from(self, settings: Mapping, meta: Mapping, error: type[Exception]) -> dict:
        if "nlist" not in meta:
            return dict(settings)
        return {**settings, "nlist": check("meta nlist", meta["nlist"], PARAM_BOUNDS["nlist"], error)}

    def search_parameters(self, settings: Mapping) -> dict[str, float]:
        return {"nprobe": min(int(settings["nprobe"]), int(settings["nlist"]))}

    def nbytes(self, n: int, dim: int, settings: Mapping) -> int:
        return 4 * n * dim + 8 * n  # plus an id per vector in its list


class IVFPQ(IVF):
    """FAISS IVF-PQ: ``m`` sub-vectors of ``nbits``-bit codes (no polysemous training); with
    ``refine_factor`` > 0 the ``k * refine_factor`` best PQ candidates are re-ranked exactly (``RFlat``)."""

    defaults = MappingProxyType({"nlist": 1024, "nprobe": 32, "m": 32, "nbits": 8, "refine_factor": 10})

    def check_dim(self, dim: int, settings: Mapping, error: type[Exception]) -> None:
        if dim % int(settings["m"]):
            raise error(f"ivfpq needs the dimension ({dim}) divisible by m ({settings['m']})")

    def factory(self, settings: Mapping) -> str:
        pq = f"IVF{int(settings['nlist'])},PQ{int(settings['m'])}x{int(settings['nbits'])}np"
        return pq + (",RFlat" if int(settings["refine_factor"]) > 0 else "")

    def centroids(self, settings: Mapping) -> int:
        return max(int(settings["nlist"]), 2 ** int(settings["nbits"]))  # PQ: 2**nbits centroids a sub-vector

    def search_parameters(self, settings: Mapping) -> dict[str, float]:
        refine = int(settings["refine_factor"])
        return {**super().search_parameters(settings), **({"k_factor_rf": float(refine)} if refine > 0 else {})}

    def nbytes(self, n: int, dim: int, settings: Mapping) -> int:
        codes = n * (int(settings["m"]) * int(settings["nbits"]) // 8 + 8)
        return codes + (4 * n * dim if int(settings["refine_factor"]) > 0 else 0)


EXACT, FLAT, HNSW_GRAPH, IVF_FLAT, IVF_PQ = Exact(), Flat(), HNSW(), IVF(), IVFPQ()
