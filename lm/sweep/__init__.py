"""lm-sweep: a grid of gin bindings -> one lm-train run per point -> tables and curves.

grid: parsing and expanding `--grid NAME=[...]` flags; launch: running the points N at a time
(resumable); results: rows and status read back from run directories; tables, plots: the
report (results.csv, results.md, curves.png).
"""
from lm.sweep.launch import MAX_EXIT_STATUS, prepare, run_sweep
from lm.sweep.results import collect, run_status, write_report

__all__ = ["MAX_EXIT_STATUS", "prepare", "run_sweep", "collect", "run_status", "write_report"]
