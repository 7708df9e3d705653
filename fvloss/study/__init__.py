"""Studies: every loss tuned with the same budget, then its finals over seeds, on Optuna
(``fvloss study``).

* :mod:`fvloss.study.spec`: the study file, checked; each loss's search space from the
  registry (every head declares ``search``: ArcFace's s and m, AdaFace's m and h ...);
* :mod:`fvloss.study.engine`: the studies in one storage (a SQLite file in the study folder
  by default, any Optuna storage URL, or ``journal:PATH``), workers taking trials under a lock
  so the budget is trained exactly once, heartbeats and retries that resume a dead worker's
  trial from its run folder's checkpoint, the finals, the status table.

The report (``fvloss study report``) lives with the commands, in :mod:`fvloss.cli.study`.
"""

from .engine import (
    ReportToTrial,
    WorkerStopped,
    fail_running,
    finals_study,
    prepare,
    run_worker,
    status,
    tuning_study,
)
from .spec import Protocol, StudySpec, load_study, space_for

__all__ = [
    "Protocol",
    "ReportToTrial",
    "StudySpec",
    "WorkerStopped",
    "fail_running",
    "finals_study",
    "load_study",
    "prepare",
    "run_worker",
    "space_for",
    "status",
    "tuning_study",
]
