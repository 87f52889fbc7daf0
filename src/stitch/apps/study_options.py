"""How a tuning study runs (:class:`StudyOptions`), kept apart from :mod:`stitch.apps.tuning` so the command
line reads its fields without loading the training stack."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StudyOptions:
    """How a study runs, apart from what it searches: where it is stored (None: ``study.db`` in the output
    folder) and under which name, how many trials in all and for how long, parallel jobs, the sampler's seed,
    and whether each trial's run folder is kept. Fields with ``help`` are ``stitch tune`` options."""

    storage: str | None = field(
        default=None, metadata={"help": "SQLAlchemy URL of the study (default sqlite:///OUT/study.db)"}
    )
    study_name: str = field(
        default="stitch", metadata={"help": "study name (resume by running the same command again)", "flag": "--study"}
    )
    trials: int = field(default=20, metadata={"help": "finished + pruned trials wanted in all"})
    timeout: float | None = field(default=None, metadata={"help": "stop starting new trials after this many seconds"})
    n_jobs: int = field(default=1, metadata={"help": "trials run at once"})
    seed: int = field(default=0, metadata={"help": "seed of the sampler"})
    keep_runs: bool = field(default=False, metadata={"help": "keep every trial's run folder under OUT/runs"})
