"""Metric logging (TorchRL loggers, CSV layout, resolved config), reading back, plotting, progress and summary."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict

from diffrl.train import ConfigError, MetricLogger, format_summary, make_progress, read_metrics
from diffrl.train.plot import main as plot_main
from diffrl.train.plot import plot_runs


def test_csv_layout_values_and_resolved_config(tmp_path):
    cfg = OmegaConf.create({"seed": 3, "offline": {"steps": 10, "eval_every": "${offline.steps}"}})
    with MetricLogger(tmp_path / "run", config=cfg) as logger:
        logger.log({"eval/return": torch.tensor([-12.5]), "loss_actor": np.float32(0.25), "n": 3}, step=10)
        logger.log(TensorDict({"eval": {"return": torch.tensor(-2.0)}}, []), step=20)
        assert logger.last == {"eval/return": -2.0, "loss_actor": 0.25, "n": 3.0}
    run = tmp_path / "run"
    # TorchRL's CSVLogger layout: one file per metric, "step,value" lines, "/" in names making subdirectories.
    assert (run / "scalars" / "eval" / "return.csv").read_text().splitlines() == ["10,-12.5", "20,-2.0"]
    assert (run / "scalars" / "loss_actor.csv").read_text() == "10,0.25\n"
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.seed == 3 and saved.offline.eval_every == 10  # resolved, not "${...}"
    metrics = read_metrics(run)
    assert sorted(metrics) == ["eval/return", "loss_actor", "n"]
    steps, values = metrics["eval/return"]
    assert steps.dtype == np.int64 and steps.tolist() == [10, 20] and values.tolist() == [-12.5, -2.0]


def test_log_rejects_non_scalars(tmp_path):
    with MetricLogger(tmp_path) as logger:
        with pytest.raises(ValueError, match=r"metric 'q' has 4 elements .*log a scalar, e\.g\. value\.mean\(\)"):
            logger.log({"q": torch.ones(4)}, step=0)
        with pytest.raises(TypeError, match=r"metric 'name' is a str"):
            logger.log({"name": "abc"}, step=0)


def test_unknown_backend_and_missing_extra_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"^unknown logger\.backend 'tb'; accepted: csv, tensorboard, wandb$"):
        MetricLogger(tmp_path, backend="tb")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name))
    with pytest.raises(
        ConfigError,
        match=r"logger\.backend=wandb needs the 'wandb' package.*"
        r"pip install 'diffrl\[wandb\]' or use logger\.backend=csv",
    ):
        MetricLogger(tmp_path, backend="wandb")


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="needs the tensorboard extra")
def test_tensorboard_backend_writes_events_and_csv(tmp_path):
    with MetricLogger(tmp_path, backend="tensorboard", config={"seed": 0}) as logger:
        logger.log({"eval/return": 1.0}, step=1)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert read_metrics(tmp_path)["eval/return"][1].tolist() == [1.0]


def test_truncate_after_drops_later_rows(tmp_path):
    with MetricLogger(tmp_path) as logger:
        for step in range(1, 6):
            logger.log({"a": step * 1.5}, step)
        logger.truncate_after(3)
        logger.log({"a": 99.0}, 4)
    steps, values = read_metrics(tmp_path)["a"]
    assert steps.tolist() == [1, 2, 3, 4] and values.tolist() == [1.5, 3.0, 4.5, 99.0]


def test_read_metrics_skips_a_line_cut_by_a_crash(tmp_path):
    (tmp_path / "scalars").mkdir()
    (tmp_path / "scalars" / "x.csv").write_text("2,0.5\n1,0.25\n3,0.")
    (tmp_path / "scalars" / "y.csv").write_text("1,1.0\n2,")
    out = read_metrics(tmp_path)
    assert out["x"][0].tolist() == [1, 2, 3] and out["x"][1].tolist() == [0.25, 0.5, 0.0]  # sorted by step
    assert out["y"][0].tolist() == [1]
    with pytest.raises(FileNotFoundError, match=r"no metrics in .*expected CSV files under <run_dir>/scalars/"):
        read_metrics(tmp_path / "scalars" / "nothing")


def test_plot_overlays_runs_into_a_png(tmp_path, capsys):
    for name, slope in (("a", 1.0), ("b", 2.0)):
        with MetricLogger(tmp_path / name) as logger:
            for step in range(0, 100, 10):
                logger.log({"eval/return": slope * step, "eval/normalized_score": slope}, step)
    out = tmp_path / "fig" / "curve.png"
    assert (
        plot_main(
            [
                str(tmp_path / "a"),
                str(tmp_path / "b"),
                "--metric",
                "eval/return",
                "--metric",
                "eval/normalized_score",
                "--out",
                str(out),
                "--smooth",
                "3",
            ]
        )
        == 0
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert capsys.readouterr().out.strip() == str(out)
    # default metric: the normalized score when present; default place: inside the single run
    assert plot_runs([tmp_path / "a"]) == tmp_path / "a" / "learning_curve.png"
    assert plot_main([str(tmp_path / "a"), "--metric", "eval/retrun"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "error: metric 'eval/retrun' is in none of the runs; available: eval/normalized_score, eval/return"
    )
    assert plot_main([str(tmp_path / "missing")]) == 2
    assert "error: no metrics in" in capsys.readouterr().err


def test_progress_shows_selected_metrics_and_summary_line():
    bar = make_progress(100, "offline", initial=40, keys=["loss_actor", "eval/return"], disable=True)
    bar.update(10, {"loss_actor": torch.tensor(0.123456), "loss_qvalue": 3.0})
    bar.update(5, {"eval/return": -150.0})
    assert bar.n == 55
    assert bar.postfix == {"loss_actor": "0.1235", "eval/return": "-150"}
    bar.close()
    line = format_summary("iql", 1000, 20.0, {"eval/return": -150.25, "eval/normalized_score": torch.tensor(42.0)})
    assert line == "iql: 1000 steps in 20.0 s (50.0 steps/s) | eval/return -150.2 | eval/normalized_score 42"
