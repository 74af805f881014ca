"""benchmarks/fidelity/diffusion_ql.py: argument parsing, the export into the official replay format, identical
minibatches on both sides, and a tiny end-to-end run (skipped without an official checkout)."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_CANDIDATES = [
    os.environ.get("DIFFRL_OFFICIAL_DQL", ""),
    "/work/scratch/hf/official",
    "/work/scratch/hl/official",
]
OFFICIAL = next(
    (p for p in OFFICIAL_CANDIDATES if p and os.path.isfile(os.path.join(p, "agents", "ql_diffusion.py"))), None
)


@pytest.fixture(scope="module")
def fidelity():
    spec = importlib.util.spec_from_file_location("fidelity_dql", ROOT / "benchmarks" / "fidelity" / "diffusion_ql.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fidelity_dql"] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    path = list(sys.path)
    yield module
    sys.modules.pop("fidelity_dql", None)
    # the official checkout's top-level packages (agents, utils) must not leak into other tests
    sys.path[:] = path
    for name in [n for n in sys.modules if n.split(".")[0] in ("agents", "utils")]:
        if OFFICIAL and os.path.abspath(OFFICIAL) in (getattr(sys.modules[name], "__file__", None) or ""):
            del sys.modules[name]


def tiny_buffer(n: int = 64):
    """A pendulum-shaped offline buffer in memory (no dataset built): obs 3, action 1 in [-2, 2]."""
    from diffrl.data import OfflineReplayBuffer

    g = torch.Generator().manual_seed(0)
    obs = torch.randn(n, 3, generator=g)
    terminated = torch.zeros(n, 1, dtype=torch.bool)
    terminated[n // 2] = True
    data = TensorDict(
        {
            "observation": obs,
            "action": torch.rand(n, 1, generator=g) * 4 - 2,
            "next": {
                "observation": obs + 0.1,
                "reward": -torch.rand(n, 1, generator=g),
                "terminated": terminated,
                "truncated": torch.zeros(n, 1, dtype=torch.bool),
                "done": terminated.clone(),
            },
        },
        batch_size=[n],
    )
    return OfflineReplayBuffer(
        data,
        batch_size=None,
        dataset_id="test/pendulum-v0",
        env_id="Pendulum-v1",
        ref_min_score=-1000.0,
        ref_max_score=0.0,
    )


def test_parse_args_defaults_and_errors(fidelity):
    args = fidelity.parse_args(["--official-path", "x"])
    assert args.seeds == [0, 1, 2] and args.updates == [1000, 5000] and args.episodes == 10
    assert args.grad_norm == 5.0  # pendulum: diffrl's pendulum value
    args = fidelity.parse_args(
        ["--official-path", "x", "--dataset", "diffrl/hopper/medium-v0", "--updates", "300", "1000"]
    )
    assert args.grad_norm == 9.0 and args.updates == [300, 1000]  # the official hopper-medium clip
    for bad in (["--updates", "0"], ["--updates", "5", "5"], ["--episodes", "0"]):
        with pytest.raises(SystemExit):
            fidelity.parse_args(["--official-path", "x", *bad])
    with pytest.raises(SystemExit):  # --official-path is required
        fidelity.parse_args([])


def test_import_official_names_the_fix_for_a_wrong_path(fidelity, tmp_path):
    with pytest.raises(SystemExit, match="ql_diffusion.py"):
        fidelity.import_official(str(tmp_path))


def test_export_matches_the_official_format(fidelity):
    rb = tiny_buffer()
    out = fidelity.export_official(rb.transitions)
    td = rb.transitions
    assert torch.equal(out["state"], td["observation"]) and torch.equal(out["next_state"], td["next", "observation"])
    assert torch.equal(out["action"], td["action"]) and out["reward"].shape == (64, 1)
    assert torch.equal(out["reward"], td["next", "reward"])
    # not_done is 1 - terminated: exactly one zero, at the terminal transition
    assert out["not_done"].dtype == torch.float32 and out["not_done"].sum() == 63 and out["not_done"][32] == 0


def test_both_sides_see_the_same_minibatches(fidelity):
    rb = tiny_buffer()
    exported = fidelity.export_official(rb.transitions)
    ours, theirs = fidelity.IndexStream(64, 8, seed=3), fidelity.IndexStream(64, 8, seed=3)
    sampler = fidelity.OfficialSampler(exported, theirs)
    for _ in range(3):
        batch = rb.transitions[ours.next()]
        state, action, next_state, reward, not_done = sampler.sample(8)
        assert torch.equal(batch["observation"], state) and torch.equal(batch["action"], action)
        assert torch.equal(batch["next", "observation"], next_state) and torch.equal(batch["next", "reward"], reward)
        assert torch.equal(1.0 - batch["next", "terminated"].float(), not_done)
    assert not torch.equal(fidelity.IndexStream(64, 8, 3).next(), fidelity.IndexStream(64, 8, 4).next())
    with pytest.raises(ValueError, match="batch"):
        sampler.sample(16)


def test_asymmetric_bounds_are_refused(fidelity):
    assert fidelity.symmetric_bound(np.array([-2.0]), np.array([2.0])) == 2.0
    with pytest.raises(SystemExit, match="symmetric"):
        fidelity.symmetric_bound(np.array([0.0, -1.0]), np.array([1.0, 1.0]))


def test_table_pairs_seeds_and_means(fidelity):
    rows = [
        {"seed": s, "updates": 10, "side": side, "normalized": v}
        for s, side, v in [(0, "diffrl", 50.0), (0, "official", 40.0), (1, "diffrl", 70.0), (1, "official", 80.0)]
    ]
    text = fidelity.table(rows)
    assert "| 10 | 0 | 50.0 | 40.0 | +10.0 |" in text and "| 10 | 1 | 70.0 | 80.0 | -10.0 |" in text
    assert "**60.0 +- 14.1**" in text and "**+0.0 +- 14.1**" in text


@pytest.mark.skipif(OFFICIAL is None, reason="no official Diffusion-QL checkout (set DIFFRL_OFFICIAL_DQL)")
def test_tiny_run_trains_and_scores_both_sides(fidelity):
    rb = tiny_buffer()
    agent_class = fidelity.import_official(OFFICIAL)
    assert "tabulate" not in sys.modules or sys.modules["tabulate"].__spec__ is not None  # no stub left behind
    settings = fidelity.Settings(batch_size=8, hidden=256)
    rows = fidelity.run(rb, agent_class, [0], [2, 3], settings, episodes=1, max_episode_steps=3, log=lambda s: None)
    assert [(r["side"], r["updates"]) for r in rows] == [("diffrl", 2), ("diffrl", 3), ("official", 2), ("official", 3)]
    for r in rows:
        assert len(r["returns"]) == 1 and math.isfinite(r["normalized"])
        assert r["normalized"] == pytest.approx(100.0 * (r["return"] + 1000.0) / 1000.0)
