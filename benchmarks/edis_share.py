"""EDIS regeneration cost as a share of the online phase, from finished run directories.

    python benchmarks/edis_share.py runs/edis_calql/*          # one line per run, then the mean

A Cal-QL+EDIS or IQL+EDIS run logs ``train/cpu_seconds`` at every evaluation (the process's CPU time, which does not
grow with the machine's other load) and ``edis/fit_cpu_seconds`` at every regeneration. The online phase's CPU time
is the growth of ``train/cpu_seconds`` from the switch (the end-of-offline evaluation) to the end of the run; the share
is the regenerations' CPU time over it. Wall-clock shares (``edis/time`` over the phase's wall time) swing with
whatever else the machine runs, so they are not used.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from diffrl.train.metrics import read_metrics


def edis_share(run_dir: Path) -> dict[str, float]:
    """``{"online_cpu", "edis_cpu", "share", "regenerations"}`` of one run; ValueError if it lacks the scalars."""
    metrics = read_metrics(run_dir)
    missing = [k for k in ("train/cpu_seconds", "edis/fit_cpu_seconds") if k not in metrics]
    if missing:
        raise ValueError(
            f"{run_dir}: no {', '.join(missing)} scalar; run an EDIS recipe (edis_calql.py / edis_iql.py) from this "
            "version of diffrl, which logs both"
        )
    cpu_steps, cpu = metrics["train/cpu_seconds"]
    fit_steps, fit_cpu = metrics["edis/fit_cpu_seconds"]
    switch = min(fit_steps)  # the first regeneration runs at the switch
    before = [c for s, c in zip(cpu_steps, cpu) if s <= switch]
    if not before:
        raise ValueError(f"{run_dir}: no train/cpu_seconds at or before the switch (step {switch})")
    online_cpu = float(cpu[-1]) - float(before[-1])
    edis_cpu = float(sum(fit_cpu))
    return {
        "online_cpu": online_cpu,
        "edis_cpu": edis_cpu,
        "share": edis_cpu / online_cpu,
        "regenerations": len(fit_cpu),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    shares = []
    print("| run | regenerations | EDIS CPU s | online-phase CPU s | share |\n| --- | --- | --- | --- | --- |")
    for run in args.runs:
        try:
            row = edis_share(run)
        except (ValueError, FileNotFoundError) as err:
            print(f"skipped: {err}", file=sys.stderr)
            continue
        shares.append(row["share"])
        print(
            f"| {run} | {row['regenerations']} | {row['edis_cpu']:.1f} | {row['online_cpu']:.1f} | "
            f"{100 * row['share']:.1f}% |"
        )
    if shares:
        print(f"\nmean share over {len(shares)} runs: {100 * statistics.fmean(shares):.1f}%")


if __name__ == "__main__":
    main()
