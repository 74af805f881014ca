"""benchmarks/edis_share.py: the EDIS regeneration share of the online phase, from a run's CPU-time scalars."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from diffrl.train.metrics import MetricLogger

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def edis_share():
    spec = importlib.util.spec_from_file_location("diffrl_bench_edis_share", ROOT / "benchmarks" / "edis_share.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_run(run_dir: Path, *, with_edis: bool = True) -> None:
    with MetricLogger(run_dir, config={}) as logger:
        for step, cpu in [(1000, 50.0), (2000, 100.0), (3000, 150.0), (4000, 220.0)]:
            logger.log({"eval/normalized_score": 1.0, "train/cpu_seconds": cpu}, step)
        if with_edis:
            logger.log({"edis/fit_cpu_seconds": 6.0}, 2000)  # at the switch
            logger.log({"edis/fit_cpu_seconds": 6.0}, 3000)


def test_share_is_regeneration_cpu_over_the_online_phase_cpu(edis_share, tmp_path, capsys):
    _fake_run(tmp_path / "run")
    row = edis_share.edis_share(tmp_path / "run")
    # online phase: 220 - 100 CPU s (from the switch's evaluation to the end); regenerations 12 s
    assert row["online_cpu"] == pytest.approx(120.0) and row["edis_cpu"] == pytest.approx(12.0)
    assert row["share"] == pytest.approx(0.1) and row["regenerations"] == 2
    edis_share.main([str(tmp_path / "run")])
    assert "10.0%" in capsys.readouterr().out


def test_a_run_without_edis_scalars_is_named_in_the_error(edis_share, tmp_path):
    _fake_run(tmp_path / "plain", with_edis=False)
    with pytest.raises(ValueError, match="edis/fit_cpu_seconds"):
        edis_share.edis_share(tmp_path / "plain")
