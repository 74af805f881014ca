"""Aggregate run directories across seeds into a markdown table and PNG curves (rliable's IQM and intervals).

    python benchmarks/report.py runs/calql_* runs/edis_calql_* --base calql --phase online --out report/
    python benchmarks/report.py RUN_DIR... --method-of edis=runs/edis_* --metric eval/return --last-k 3 --out report/

Writes OUT/report.md and OUT/<metric>.png and prints the table; the same as ``python -m diffrl.train.report``
(see :mod:`diffrl.train.report`). Needs ``pip install 'diffrl[report]'``.
"""

from __future__ import annotations

from diffrl.train.report import main

if __name__ == "__main__":
    raise SystemExit(main())
