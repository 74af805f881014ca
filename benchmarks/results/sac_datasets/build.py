"""Build one task's SAC ``medium`` / ``medium-replay`` datasets and record the learning curve and build cost.

Usage (one task per process; one torch thread)::

    nice -n 5 python benchmarks/results/sac_datasets/build.py hopper

Writes ``<task>.json`` next to this file: every evaluation (step, stochastic and deterministic mean returns and
normalised scores, training CPU seconds), the stopping step, the datasets' normalised mean +- std over complete
episodes, episode counts, on-disk sizes and the build's CPU time (``time.process_time``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from diffrl.data.paths import dataset_dir
from diffrl.data.sac_generator import D4RL_REFERENCE_SCORES, build_sac_datasets, complete_episode_returns

TASKS = {"hopper": "Hopper", "halfcheetah": "HalfCheetah", "walker2d": "Walker2d"}


def dataset_summary(dataset, ref_min: float, ref_max: float) -> dict:
    """Normalised return mean +- std over complete episodes (the one cut by the step budget is left out)."""
    returns = complete_episode_returns(dataset)  # terminated or at the env's time limit (1000 steps)
    scores = 100.0 * (returns - ref_min) / (ref_max - ref_min)
    return {
        "transitions": int(dataset.total_steps),
        "episodes": int(dataset.total_episodes),
        "complete_episodes": len(returns),
        "normalized_mean": float(scores.mean()),
        "normalized_std": float(scores.std()),
        "return_mean": float(np.mean(returns)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--train-steps", type=int, default=300_000)
    parser.add_argument("--medium-steps", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    env_name = TASKS[args.task]
    ref_min, ref_max = D4RL_REFERENCE_SCORES[env_name]
    out_path = Path(__file__).with_name(f"{args.task}.json")
    evaluations = []

    def log(record: dict) -> None:
        evaluations.append(record)
        print(json.dumps(record), flush=True)
        # the curve so far, readable while the build runs (replaced by the full record at the end)
        partial = {"status": "running", "env_id": f"{env_name}-v5", "evaluations": evaluations}
        out_path.write_text(json.dumps(partial, indent=1) + "\n")

    start = time.process_time()
    out = build_sac_datasets(
        f"{env_name}-v5",
        f"diffrl/{args.task}",
        train_steps=args.train_steps,
        medium_steps=args.medium_steps,
        seed=args.seed,
        overwrite=True,
        progress=False,
        on_evaluation=log,
    )
    cpu = time.process_time() - start
    meta = out["medium"].storage.metadata
    result = {
        "command": " ".join(["python", *sys.argv]),
        "env_id": f"{env_name}-v5",
        "ref_min_score": ref_min,
        "ref_max_score": ref_max,
        "stop_step": int(meta["sac_train_steps"]),
        "train_cpu_seconds": float(meta["sac_train_cpu_seconds"]),
        "build_cpu_seconds": round(cpu, 1),
        "evaluations": evaluations,
    }
    for kind, dataset in out.items():
        path = dataset_dir(f"diffrl/{args.task}/{kind}-v0")
        size = subprocess.run(["du", "-sh", str(path)], capture_output=True, text=True).stdout.split()[0]
        result[kind] = {**dataset_summary(dataset, ref_min, ref_max), "path": str(path), "size": size}
    out_path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "evaluations"}, indent=1))


if __name__ == "__main__":
    main()
