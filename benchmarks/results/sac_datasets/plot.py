"""Plot the SAC generator's learning curves (``<task>.json`` from build.py, or a build's stdout log) to curves.png.

Usage::

    python benchmarks/results/sac_datasets/plot.py hopper.json [halfcheetah.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
REFS = {"Hopper": (-20.272305, 3234.3), "HalfCheetah": (-280.178953, 12135.0), "Walker2d": (1.629008, 4592.3)}
# CleanRL's published SAC curve on Hopper: about 600 return at 50k steps and 1000 at about 65k (approximate read-off)
CLEANRL_HOPPER = [(50_000, 600.0), (65_000, 1000.0)]


def load(path: Path) -> tuple[str, list[dict]]:
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
        return data["env_id"].split("-v")[0], data["evaluations"]
    records = [json.loads(line) for line in text.splitlines() if line.startswith('{"step"')]
    return path.stem.split(".")[0].capitalize().replace("cheetah", "Cheetah").replace("2D", "2d"), records


def main(paths: list[str]) -> None:
    runs = [load(Path(p)) for p in paths]
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.8), squeeze=False)
    for ax, (name, records) in zip(axes[0], runs):
        steps = [r["step"] for r in records]
        ax.plot(steps, [r["return_deterministic"] for r in records], "o-", label="deterministic eval")
        ax.plot(steps, [r["return_stochastic"] for r in records], "s--", label="stochastic eval")
        lo, hi = REFS[name]
        ax.axhspan(lo + 0.3 * (hi - lo), lo + 0.6 * (hi - lo), color="green", alpha=0.12, label="normalised 30-60")
        ax.axhline(lo + 0.35 * (hi - lo), color="green", ls=":", lw=1, label="stop band starts (35): both evals above")
        if name == "Hopper":
            xs, ys = zip(*CLEANRL_HOPPER)
            ax.plot(xs, ys, "k*", markersize=11, label="CleanRL SAC (reference)")
        ax.set(title=f"{name}-v5", xlabel="environment steps", ylabel="return")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "curves.png", dpi=110)


if __name__ == "__main__":
    main(sys.argv[1:])
