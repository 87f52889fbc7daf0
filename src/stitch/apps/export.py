"""Export a run as a sentence-transformers model folder: captions in, image-space predictions out.

``export_sentence_transformers(run, OUT)`` writes a folder whose first modules are the text model's, copied
as they are (Transformer, Pooling, Normalize, ... as its ``modules.json`` says), followed by
:class:`StitchTranslator`, which applies the run's translator to the sentence embedding. So

    SentenceTransformer(OUT, trust_remote_code=True).encode(texts)

gives, per text, what ``stitch.predict(run, text_model.encode(texts))`` gives. sentence-transformers >= 6
refuses every module class outside its own namespace unless ``trust_remote_code=True``, and that flag lets a
tampered folder's ``modules.json`` name any module (and its transformer config any code). So the folder is
untrusted input: :func:`load_export` reads ``modules.json`` itself, refuses every module type but
sentence-transformers' own and :class:`StitchTranslator` and every module path that leaves the folder, and
loads with ``trust_remote_code=False``, handing sentence-transformers the installed StitchTranslator class.

The translator's folder holds the run's ``config.json`` and ``model.safetensors`` (an ensemble: one such
folder per member and ``members.json``) and is rebuilt with :func:`stitch.translators.build_model`, so every
model kind with image-space predictions works; loading reads JSON and safetensors only, never a pickle.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from stitch.errors import StitchError, UsageError
from stitch.io.atomic import OutputExistsError, safe_member
from stitch.io.untrusted import first_repeat, inside, read_json
from stitch.training.run import CONFIG, WEIGHTS, Run
from stitch.translators import Ensemble, Translator, check_finite
from stitch.translators.base import check_target
from stitch.translators.ensemble import check_weights

if TYPE_CHECKING:
    from stitch.api import RunLike

try:  # the module protocol of the installed sentence-transformers
    from sentence_transformers.base.modules import Module as _Base  # >= 6
except ImportError:  # pragma: no cover - older releases, or sentence-transformers absent
    try:
        from sentence_transformers.models import Module as _Base  # 5.x
    except ImportError:
        _Base = torch.nn.Module  # 3.x/4.x load old-style modules through ``load(path)``

FORMAT = "stitch-translator"
VERSION = 1
TRANSLATOR_FILE = "translator.json"
MEMBERS_FILE = "members.json"
MODULE_DIR = "StitchTranslator"
# never copied from the text model: pickled weights (a safetensors copy must exist), code, other backends
SKIPPED = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt", "*.h5", "*.msgpack", "*.ot", "*.py", "*.pyc")
SKIPPED += (".git", "__pycache__", "onnx", "openvino", "README.md")  # README.md: the export writes its own


@dataclass
class RunTree:
    """What the module saves: one run (its config.json text and model), or weighted member runs."""

    info: str = ""
    model: Translator | None = None
    members: list[RunTree] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, run: Run) -> RunTree:
        """The tree of an opened run (an :class:`~stitch.training.EnsembleRun` has members)."""
        members = getattr(run, "members", None)
        if members is None:
            return cls(info=run.info.to_json(), model=run.model)
        return cls(members=[cls.of(m) for m in members], weights=list(run.weights))

    def translator(self) -> Translator:
        """The model to apply: the run's, or the members' weighted ensemble (as stitch builds it)."""
        if not self.members:
            return self.model
        return Ensemble([m.translator() for m in self.members], self.weights)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if not self.members:
            (folder / CONFIG).write_text(self.info)
            state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            save_file(state, str(folder / WEIGHTS))
            return
        names = [f"member{i}" for i in range(len(self.members))]
        (folder / MEMBERS_FILE).write_text(json.dumps({"members": names, "weights": self.weights}, indent=2))
        for name, member in zip(names, self.members):
            member.save(folder / name)

    @classmethod
    def read(cls, folder: Path) -> RunTree:
        """Rebuild a saved tree: ``Run.load`` (build_model + safetensors) for each run folder."""
        if not (folder / MEMBERS_FILE).exists():
            return cls(info=(folder / CONFIG).read_text(), model=Run.load(folder).model)
        try:
            body = json.loads((folder / MEMBERS_FILE).read_text())
            names, weights = [str(n) for n in body["members"]], [float(w) for w in body["weights"]]
        except (KeyError, TypeError, ValueError) as err:
            raise UsageError(f"{folder / MEMBERS_FILE} is not a valid members file: {err}") from err
        members = [cls.read(safe_member(folder, name)) for name in names]
        return cls(members=members, weights=check_weights(weights, len(members)))


class StitchTranslator(_Base):
    """sentence-transformers module: replaces ``sentence_embedding`` with the run's image-space direction (the
    vector a cosine with raw image embeddings ranks as the run does, as ``stitch predict`` writes it)."""

    config_file_name = TRANSLATOR_FILE

    def __init__(
        self, tree: RunTree, normalize_input: bool = False, meta: dict | None = None, target: str = "direction"
    ) -> None:
        super().__init__()
        self.tree, self.normalize_input, self.meta = tree, bool(normalize_input), dict(meta or {})
        self.target = check_target(target)
        self.translator = tree.translator().eval()
        if not self.translator.has_image_space:
            raise UsageError(f"{type(self.translator).__name__} has no image-space predictions to export")

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        x = features["sentence_embedding"].float()
        if self.normalize_input:  # stitch's text encoders L2-normalise what the model gives
            x = F.normalize(x, dim=-1)
        out = self.translator.to_image_space(x, self.target).float()
        features["sentence_embedding"] = check_finite(out, "image-space predictions")
        return features

    def get_embedding_dimension(self) -> int:
        return int(self.translator.image_dim)

    get_sentence_embedding_dimension = get_embedding_dimension  # sentence-transformers < 5.4

    def get_config_dict(self) -> dict[str, Any]:
        body = {"format": FORMAT, "version": VERSION, "normalize_input": self.normalize_input, **self.meta}
        return {**body, "prediction": self.target}

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        """The run(s) as stitch run folders plus ``translator.json`` (always safetensors, never pickles)."""
        folder = Path(output_path)
        self.tree.save(folder)
        (folder / TRANSLATOR_FILE).write_text(json.dumps(self.get_config_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        **kwargs,
    ) -> StitchTranslator:
        """The module saved in ``model_name_or_path/subfolder`` (a local folder, or a hub model's)."""
        folder = Path(model_name_or_path) / subfolder
        if not folder.is_dir():
            from sentence_transformers.util import load_dir_path

            found = load_dir_path(model_name_or_path, subfolder, token, cache_folder, revision, local_files_only)
            folder = Path(found or folder)
        try:
            body = json.loads((folder / TRANSLATOR_FILE).read_text())
        except (OSError, ValueError) as err:
            raise UsageError(f"{folder} holds no readable {TRANSLATOR_FILE}: {err}") from err
        if body.get("format") != FORMAT or body.get("version") != VERSION:
            raise UsageError(f"{folder / TRANSLATOR_FILE} is not a {FORMAT} v{VERSION} file")
        meta = {k: v for k, v in body.items() if k not in ("format", "version", "normalize_input", "prediction")}
        target = str(body.get("prediction", "point"))  # folders written before directions held points
        return cls(RunTree.read(folder), bool(body.get("normalize_input")), meta, target)


CLASS_REF = f"{StitchTranslator.__module__}.{StitchTranslator.__name__}"
#: where the class lived before the applications moved to ``stitch.apps``: folders exported then still load
STITCH_REFS = (CLASS_REF, "stitch.outputs.export.StitchTranslator")


def export_sentence_transformers(
    run: RunLike, out: str | Path, text_model: str | None = None, force: bool = False
) -> Path:
    """Write ``out``: the text model's modules, then the run's translator, loadable by SentenceTransformer.

    ``run`` is a Run, TrainResult, or run/ensemble folder; ``text_model`` (``minilm``, ``st:/path``)
    defaults to the text encoder the run's data recorded. ``out`` is built in a temporary folder beside it
    and renamed into place; an existing ``out`` is replaced only with ``force`` (and only an earlier export
    or an empty folder)."""
    from stitch import api

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(out)
    opened = api.open(run, "cpu")
    if not opened.model.has_image_space:
        raise UsageError(
            f"{opened.name} ({type(opened.model).__name__}) scores in a learnt shared space and has no image-space "
            "predictions to export; export a translator run (ridge, procrustes, mlp, resmlp, set)"
        )
    spec, source = _text_model(opened, text_model)
    _check_target(out, force, source, opened.path)
    normalize_input = _check_text_model(source, spec, opened.model.text_dim)
    meta = {"text_model": spec, "run_id": opened.run_id, "image_dim": int(opened.model.image_dim)}
    module = StitchTranslator(RunTree.of(opened), normalize_input, meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-{os.getpid()}.", suffix=".tmp", dir=out.parent))
    try:
        _assemble(tmp, source, module)
        _check_target(out, force, source, opened.path)  # again: something may have appeared meanwhile
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _text_model(run: Run, given: str | None) -> tuple[str, Path]:
    """The text model's spec and folder: ``given``, else the encoder the run's data recorded."""
    from stitch.encoders.text import _resolve_text_path

    spec = given or (run.info.meta.get("encoders") or {}).get("text")
    if not spec:
        raise UsageError(
            f"{run.name} does not record its text encoder: pass the text model the captions were embedded with "
            "(text_model='minilm' or 'st:/local/path'; --text-model on the command line)"
        )
    try:
        return spec, _resolve_text_path(spec)
    except ValueError as err:
        raise UsageError(f"cannot export with text model {spec!r}: {err}") from err


def _check_text_model(source: Path, spec: str, text_dim: int) -> bool:
    """Check ``source`` loads offline, without custom code, into ``text_dim``; True when it does not normalise."""
    from sentence_transformers import SentenceTransformer

    if not (source / "modules.json").is_file():
        raise UsageError(f"{source} has no modules.json: not a sentence-transformers model folder")
    model = SentenceTransformer(str(source), device="cpu", local_files_only=True)  # no trust_remote_code
    dim = model.encode(["a"], convert_to_numpy=True).shape[1]  # the same on every sentence-transformers release
    if int(dim) != int(text_dim):
        raise UsageError(f"text model {spec} makes {dim}-d embeddings, but the run translates {text_dim}-d captions")
    return type(list(model)[-1]).__name__ != "Normalize"


def _assemble(folder: Path, source: Path, module: StitchTranslator) -> None:
    """Copy the text model into ``folder`` and add the translator as its last module."""
    shutil.copytree(source, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*SKIPPED))
    if not any(folder.rglob("*.safetensors")):
        raise UsageError(f"{source} has no .safetensors weights; re-save it with sentence-transformers first")
    entries = json.loads((source / "modules.json").read_text())
    idx = len(entries)
    name = str(idx) if str(idx) not in {str(e.get("name")) for e in entries} else "stitch_translator"
    path = f"{idx}_{MODULE_DIR}"
    module.save(str(folder / path))
    entries.append({"idx": idx, "name": name, "path": path, "type": CLASS_REF})
    (folder / "modules.json").write_text(json.dumps(entries, indent=2))
    (folder / "README.md").write_text(_readme(module))


def _readme(module: StitchTranslator) -> str:
    meta = module.meta
    return f"""# stitch translator (sentence-transformers export)

Texts -> `{meta.get("text_model")}` caption embeddings -> stitch run `{meta.get("run_id")}` -> {meta.get("image_dim")}-d
vectors in the raw image-feature space: the directions a cosine with raw image embeddings ranks as the run
ranks (what `stitch predict` gives; not normalised). Compare them with raw image embeddings by cosine.

```python
from stitch.apps.export import load_export

model = load_export("path/to/this/folder")  # needs stitch installed
predictions = model.encode(["a dog runs on the beach"])
```

`load_export` checks `modules.json` first: every module must be sentence-transformers' own or
`{CLASS_REF}` (imported from the installed stitch), every module path inside this folder; then it
loads without `trust_remote_code`. This folder holds no code; its weights are safetensors and its
configs JSON.

`SentenceTransformer("path/to/this/folder", trust_remote_code=True)` loads it too, but only use it on a
folder you made yourself: that flag imports whatever module `modules.json` names, code placed in the
folder included.
"""


class ExportError(StitchError, ValueError):
    """An export folder that :func:`load_export` will not load (what it would import or read is not allowed)."""


ST_NAMESPACE = "sentence_transformers"
ENTRY_KEYS = {"idx", "name", "path", "type"}  # what sentence-transformers writes, plus an optional "kwargs"
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def load_export(path: str | Path, device: str = "cpu", **kwargs: Any):
    """The export in ``path`` as a ``SentenceTransformer``, without ``trust_remote_code``: ``modules.json`` is
    checked first (:func:`check_export`), so no module a tampered folder names is ever imported. ``kwargs``
    go to ``SentenceTransformer`` (``local_files_only`` defaults to True)."""
    if kwargs.pop("trust_remote_code", False):
        raise ExportError("load_export never trusts remote code; it loads stitch exports without it")
    folder = check_export(path)
    from sentence_transformers import SentenceTransformer

    kwargs = {"local_files_only": True, **kwargs}
    pinned = getattr(SentenceTransformer, "_load_with_module_classes", None)  # sentence-transformers >= 6
    if pinned is None:  # older releases import an installed class from a local folder without the flag
        return SentenceTransformer(str(folder), device=device, trust_remote_code=False, **kwargs)
    classes = dict.fromkeys(STITCH_REFS, StitchTranslator)
    return pinned(str(folder), classes, device=device, trust_remote_code=False, **kwargs)


def check_export(path: str | Path) -> Path:
    """``path`` if its ``modules.json`` is an export's: entries with sentence-transformers' keys, distinct
    names, module paths inside the folder, every type sentence-transformers' own (resolved in the installed
    package) and StitchTranslator once, last. Refused in one ExportError line naming the file and entry."""
    folder = Path(path)
    if not folder.is_dir():
        raise ExportError(f"{folder} is not a folder: not a stitch sentence-transformers export")
    where = folder / "modules.json"
    if not where.exists():
        raise ExportError(f"{where} is missing: not a sentence-transformers export")
    entries = read_json(where, ExportError)
    if not isinstance(entries, list) or not entries:
        raise ExportError(f"{where}: must be a non-empty list of module entries")
    for number, entry in enumerate(entries):
        _check_entry(folder, entry, f"{where}: entry {number}")
    repeated = first_repeat([entry["name"] for entry in entries])
    if repeated is not None:
        raise ExportError(f"{where}: module name {repeated!r} appears twice")
    if entries[-1]["type"] not in STITCH_REFS or sum(e["type"] in STITCH_REFS for e in entries) != 1:
        raise ExportError(f"{where}: the last module, and only it, must be {CLASS_REF}: not a stitch export")
    return folder


def _check_entry(folder: Path, entry: object, where: str) -> None:
    """One ``modules.json`` entry: its keys and their types, its path inside the folder, its type allowed."""
    if not isinstance(entry, dict):
        raise ExportError(f"{where}: must be an object, got {type(entry).__name__}")
    keys = set(entry)
    if not ENTRY_KEYS <= keys <= ENTRY_KEYS | {"kwargs"}:
        odd = sorted(keys - ENTRY_KEYS - {"kwargs"}) or sorted(ENTRY_KEYS - keys)
        raise ExportError(f"{where}: unknown or missing keys {odd}")
    if not isinstance(entry["idx"], int) or isinstance(entry["idx"], bool) or not isinstance(entry["name"], str):
        raise ExportError(f"{where}: idx must be an integer and name a string, got {entry['idx']!r}, {entry['name']!r}")
    kwargs = entry.get("kwargs", [])
    if not isinstance(kwargs, list) or not all(isinstance(k, str) for k in kwargs):
        raise ExportError(f"{where}: kwargs must be a list of names, got {kwargs!r}")
    module_path = entry["path"]
    if not isinstance(module_path, str) or os.path.isabs(module_path) or "\\" in module_path:
        raise ExportError(f"{where}: path {module_path!r} must be a relative name inside {folder}")
    if module_path != "":  # "" is the folder itself (a Transformer module)
        inside(folder, module_path, where, ExportError)
    allowed_module(entry["type"], folder, where)


def allowed_module(type_ref: object, folder: Path, where: str) -> type:
    """The class ``type_ref`` names when it is StitchTranslator or a module class of the installed
    sentence-transformers (imported from its package, never from ``folder``); anything else is refused
    before any import."""
    if type_ref in STITCH_REFS:
        return StitchTranslator
    ours = isinstance(type_ref, str) and _DOTTED.fullmatch(type_ref) and type_ref.startswith(ST_NAMESPACE + ".")
    if not ours:
        raise ExportError(
            f"{where}: module type {type_ref!r} is neither sentence-transformers' own nor {CLASS_REF}; "
            "refusing to import it"
        )
    module_name, _, class_name = type_ref.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ExportError(f"{where}: module type {type_ref!r} is not in the installed sentence-transformers") from err
    if not (isinstance(found, type) and issubclass(found, torch.nn.Module) and _installed(found, folder)):
        raise ExportError(f"{where}: {type_ref!r} is not a sentence-transformers module class")
    return found


def _installed(cls: type, folder: Path) -> bool:
    """Whether ``cls`` is defined in the installed sentence-transformers package (not in ``folder``)."""
    import inspect

    package = importlib.import_module(ST_NAMESPACE)
    try:
        source = Path(inspect.getfile(cls)).resolve()
    except TypeError:
        return False
    root = Path(package.__file__).resolve().parent
    return source.is_relative_to(root) and not source.is_relative_to(folder.resolve())


def _is_export(path: Path) -> bool:
    try:
        entries = json.loads((path / "modules.json").read_text())
        return any(isinstance(e, dict) and e.get("type") in STITCH_REFS for e in entries)
    except (OSError, ValueError):
        return False


def _check_target(out: Path, force: bool, *keep: Path | None) -> None:
    """Refuse an existing ``out`` unless ``force`` (and then only an export or an empty folder), and an
    ``out`` that would swallow the run or the text model."""
    target = out.resolve()
    for path in filter(None, keep):
        if path.resolve().is_relative_to(target) or target.is_relative_to(path.resolve()):
            raise UsageError(f"{out} overlaps {path}: give the export a folder of its own")
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        raise OutputExistsError(f"{out} already exists; pass --force (force=True) to replace it")
    if out.is_dir() and not out.is_symlink() and any(out.iterdir()) and not _is_export(out):
        raise UsageError(f"{out} is not a stitch sentence-transformers export; refusing to replace it")


def _replace(tmp: Path, out: Path) -> None:
    """Move ``tmp`` to ``out``; an existing ``out`` is put aside first (and back if the move fails)."""
    if not (out.exists() or out.is_symlink()):
        os.rename(tmp, out)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}.", suffix=".tmp", dir=out.parent))
    os.rename(out, aside / out.name)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(aside / out.name, out)  # should this fail too, the old export stays in ``aside``
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)  # unlinks a symlinked old ``out``, never its target


__all__ = [
    "CLASS_REF",
    "ExportError",
    "RunTree",
    "StitchTranslator",
    "check_export",
    "export_sentence_transformers",
    "load_export",
]
