"""The HTML run report: ``build_report(run_dir)`` → a self-contained ``report.html``
(CLI: ``diffclust report RUN_DIR``). The files it reads are listed in
:mod:`diffclust.report.artifacts`."""

from .artifacts import parse_curve, read_run
from .builder import build_report, resolve_input

__all__ = ["build_report", "parse_curve", "read_run", "resolve_input"]
