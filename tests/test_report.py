"""diffrl.train.report: run scores, rliable aggregates across seeds, paired differences, the report and its plots."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest

from diffrl.train.metrics import MetricLogger
from diffrl.train.report import (
    aggregate,
    compare,
    group_runs,
    main,
    markdown_table,
    paired_difference,
    plot_run,
    run_score,
    run_summary,
    write_report,
)

needs_rliable = pytest.mark.skipif(importlib.util.find_spec("rliable") is None, reason="needs diffrl[report]")
REPS = 300  # bootstrap resamples: enough for the properties tested, fast on a shared CPU

OFFLINE = 30  # offline.steps of the synthetic runs: evaluations at 10, 20, 30 offline, 40, 50, 60 online


def make_run(path, seed, scores, *, std=2.0, offline=OFFLINE, metric="eval/normalized_score"):
    """A run directory as the offline-to-online loop writes it: config.yaml and one evaluation every 10 steps."""
    config = {"seed": seed, "offline": {"steps": offline}, "online": {"steps": 10 * len(scores) - offline}}
    with MetricLogger(path, config=config) as logger:
        for i, score in enumerate(scores):
            logger.log({metric: score, f"{metric}_std": std, "eval/return": score - 100.0}, 10 * (i + 1))
    return path


def constant_run(path, seed, score):
    """Six evaluations whose last three (the online phase) average exactly ``score``."""
    return make_run(path, seed, [0.0, 0.0, 0.0, score - 1.0, score, score + 1.0])


def test_run_score_whole_run_and_phases(tmp_path):
    run = make_run(tmp_path / "calql_0", 0, [10.0, 20.0, 30.0, 40.0, 50.0, 90.0])
    assert run_score(run) == pytest.approx(60.0)  # (40 + 50 + 90) / 3
    assert run_score(run, last_k=1) == 90.0
    assert run_score(run, last_k=2, phase="offline") == pytest.approx(25.0)  # steps <= offline.steps
    assert run_score(run, last_k=3, phase="online") == pytest.approx(60.0)
    assert run_score(run, "eval/return", last_k=6) == pytest.approx(40.0 - 100.0)


def test_run_score_errors_name_the_run_and_count(tmp_path):
    run = make_run(tmp_path / "short", 0, [10.0, 20.0, 30.0, 40.0])  # one online evaluation
    with pytest.raises(ValueError, match=r"short has 1 evaluation\(s\) of eval/normalized_score in its online phase, "):
        run_score(run, phase="online")
    with pytest.raises(ValueError, match=r"has 4 evaluation\(s\) .*fewer than last_k=5"):
        run_score(run, last_k=5)
    with pytest.raises(ValueError, match=r"no metric 'eval/success'; it has: eval/normalized_score"):
        run_score(run, "eval/success")
    with pytest.raises(ValueError, match=r"phase='middle' is not accepted"):
        run_score(run, phase="middle")
    with MetricLogger(tmp_path / "offline_only", config={"seed": 0, "offline": {"steps": 5}}) as logger:
        logger.log({"eval/normalized_score": 1.0}, 5)
    with pytest.raises(ValueError, match="needs an offline-to-online run"):
        run_score(logger.dir, last_k=1, phase="online")


def test_group_runs_strips_seed_suffix_and_honours_globs(tmp_path):
    dirs = [tmp_path / n for n in ("calql_0", "calql_seed1", "edis_calql_s2", "edis_calql-3", "other7")]
    groups = group_runs(dirs)
    assert {k: [p.name for p in v] for k, v in groups.items()} == {
        "calql": ["calql_0", "calql_seed1"],
        "edis_calql": ["edis_calql_s2", "edis_calql-3"],
        "other": ["other7"],
    }
    groups = group_runs(dirs, {"edis": "edis_*", "base": "*calql_*"})
    assert [p.name for p in groups["edis"]] == ["edis_calql_s2", "edis_calql-3"]
    assert [p.name for p in groups["base"]] == ["calql_0", "calql_seed1"]


@needs_rliable
def test_iqm_mean_and_interval_on_five_seeds(tmp_path):
    scores = [10.0, 40.0, 20.0, 90.0, 30.0]
    runs = [constant_run(tmp_path / f"m_{seed}", seed, s) for seed, s in enumerate(scores)]
    (result,) = compare({"m": runs}, phase="online", reps=REPS, curves=False)
    np.testing.assert_allclose(result.scores, scores)
    agg = result.summary
    assert agg.n == 5 and agg.seeds == [0, 1, 2, 3, 4]
    assert agg.iqm == pytest.approx(30.0)  # sorted 10, 20, 30, 40, 90: the middle three average 30
    assert agg.mean == pytest.approx(38.0) and agg.std == pytest.approx(np.std(scores, ddof=1))
    assert agg.iqm_ci[0] <= agg.iqm <= agg.iqm_ci[1] and agg.iqm_ci[0] < agg.iqm_ci[1]
    assert agg.mean_ci[0] <= agg.mean <= agg.mean_ci[1]
    assert 10.0 <= agg.iqm_ci[0] and agg.iqm_ci[1] <= 90.0  # a bootstrap of the scores stays within their range


@needs_rliable
def test_interval_shrinks_with_more_seeds_and_is_reproducible():
    rng = np.random.default_rng(0)
    few, many = rng.normal(50.0, 10.0, 5), rng.normal(50.0, 10.0, 80)
    a, b = aggregate(few, reps=REPS), aggregate(many, reps=REPS)
    assert b.iqm_ci[1] - b.iqm_ci[0] < 0.6 * (a.iqm_ci[1] - a.iqm_ci[0])
    again = aggregate(few, reps=REPS)
    assert again.iqm_ci == a.iqm_ci and again.mean_ci == a.mean_ci  # seeded bootstrap
    state = np.random.get_state()[1].copy()  # noqa: NPY002 (the stream rliable draws from)
    aggregate(few, reps=REPS, seed=1)
    assert np.array_equal(np.random.get_state()[1], state)  # noqa: NPY002 (left as it was)
    with pytest.warns(UserWarning, match=r"3 run\(s\) aggregated; .*>= 5 seeds"):
        aggregate([1.0, 2.0, 3.0], reps=REPS)


@needs_rliable
def test_paired_difference_matches_runs_by_config_seed(tmp_path):
    base_scores = {0: 10.0, 1: 50.0, 2: 90.0, 3: 30.0, 4: 70.0}  # seeds spread the scores far more than the methods
    gains = {0: 3.0, 1: 1.0, 2: 2.0, 3: 8.0, 4: -1.0}
    base = [constant_run(tmp_path / f"base_{s}", s, v) for s, v in base_scores.items()]
    # method directories numbered in another order than their seeds: pairing must follow config.yaml's seed
    method = [
        constant_run(tmp_path / f"method_{i}", s, base_scores[s] + gains[s]) for i, s in enumerate([4, 2, 0, 3, 1])
    ]
    results = compare({"base": base, "method": method}, phase="online", base="base", reps=REPS, curves=False)
    by_name = {r.name: r for r in results}
    assert by_name["base"].diff is None
    diff = by_name["method"].diff
    assert diff.seeds == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(diff.scores, [3.0, 1.0, 2.0, 8.0, -1.0])
    assert diff.mean == pytest.approx(2.6) and diff.iqm == pytest.approx(2.0)  # middle of -1, 1, 2, 3, 8
    assert -1.0 <= diff.iqm_ci[0] <= diff.iqm <= diff.iqm_ci[1] <= 8.0
    # pairing removes the seed-to-seed spread (10..90) shared by both methods: a far narrower interval
    base_ci = by_name["base"].summary.iqm_ci
    assert diff.iqm_ci[1] - diff.iqm_ci[0] < 0.25 * (base_ci[1] - base_ci[0])
    # the other way round the difference flips sign
    worse = paired_difference({s: v - 5.0 for s, v in base_scores.items()}, base_scores, reps=REPS)
    assert worse.mean == pytest.approx(-5.0) and worse.iqm_ci == pytest.approx((-5.0, -5.0))
    lone = constant_run(tmp_path / "lone_9", 9, 1.0)
    with pytest.warns(UserWarning, match="shares no seed with base"):
        results = compare({"base": base, "lone": [lone]}, base="base", reps=REPS, curves=False)
    assert results[1].diff is None and "| n/a (no shared seed) |" in markdown_table(results, "base")
    with pytest.raises(ValueError, match="no seed in common"):
        paired_difference({7: 1.0}, base_scores, reps=REPS)
    with pytest.raises(ValueError, match=r"base method 'calql' is not among the methods \['base', 'method'\]"):
        compare({"base": base, "method": method}, base="calql", reps=REPS, curves=False)


@needs_rliable
def test_write_report_table_png_and_cli(tmp_path, capsys):
    runs = []
    for s in range(5):
        runs.append(constant_run(tmp_path / "runs" / f"calql_{s}", s, 50.0 + s))
        runs.append(constant_run(tmp_path / "runs" / f"edis_calql_{s}", s, 55.0 + 2 * s))
    (runs[0] / "done.json").write_text(json.dumps({"cpu_seconds": 600.0}))  # as benchmarks/edis_o2o.py writes
    report = write_report(runs, tmp_path / "out", base="calql", phase="online", reps=REPS)
    text = report.path.read_text()
    assert report.path == tmp_path / "out" / "report.md"
    lines = report.table.splitlines()
    assert lines[0].startswith("| method | seeds | IQM [95% CI] | mean +- std | paired diff vs calql")
    calql_row = next(line for line in lines if line.startswith("| calql |"))
    edis_row = next(line for line in lines if line.startswith("| edis_calql |"))
    assert "| 5 | 52.0 [" in calql_row and "| 52.0 +- 1.6 |" in calql_row and "(base)" in calql_row
    assert calql_row.endswith("| 10.0 min (1 of 5 runs) |") and edis_row.endswith("| n/a |")
    assert "+7.0 [" in edis_row and "(n=5)" in edis_row  # differences 5, 6, 7, 8, 9
    assert report.table in text and "last 3 evaluations of `eval/normalized_score` in the online phase" in text
    (png,) = report.figures
    assert png == tmp_path / "out" / "normalized_score.png" and png.read_bytes()[:4] == b"\x89PNG"
    curve = report.results[0].curve
    assert curve["steps"].tolist() == [10, 20, 30, 40, 50, 60]
    assert np.all(curve["low"] <= curve["center"]) and np.all(curve["center"] <= curve["high"])

    argv = [*map(str, runs), "--method-of", "edis=*edis_calql_*", "--base", "calql", "--last-k", "2"]
    assert main([*argv, "--reps", str(REPS), "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "| edis |" in out and "paired diff vs calql" in out and (tmp_path / "cli" / "report.md").is_file()
    assert main([*map(str, runs), "--method-of", "oops", "--out", str(tmp_path / "bad")]) == 2
    assert "--method-of 'oops' is not NAME=GLOB" in capsys.readouterr().err
    assert main([str(runs[0]), "--last-k", "9", "--reps", str(REPS), "--out", str(tmp_path / "bad")]) == 2
    assert "has 6 evaluation(s)" in capsys.readouterr().err


def test_missing_rliable_is_one_line_with_the_fix(monkeypatch):
    from diffrl.train.report import _rliable

    monkeypatch.setitem(sys.modules, "rliable", None)  # as if not installed
    with pytest.raises(
        ImportError, match=r"^diffrl.train.report needs the rliable package .*pip install 'diffrl\[report\]'$"
    ):
        _rliable()


def test_run_summary_and_plot_run(tmp_path):
    run = make_run(tmp_path / "run", 0, [50.0, 52.0, 54.0, 60.0, 70.0, 80.0], std=5.0)
    assert (
        run_summary(run) == "normalized score offline 52.0 +- 1.6 (last 3 evals) -> online 70.0 +- 8.2 (last 3 evals)"
    )
    assert run_summary(run, last_k=1, metric="eval/return") == (
        "return offline -46.0 +- 0.0 (last 1 eval) -> online -20.0 +- 0.0 (last 1 eval)"
    )
    # fewer evaluations than last_k: the summary uses what there is and says so
    short = make_run(tmp_path / "short", 0, [10.0, 20.0, 30.0, 40.0])
    assert run_summary(short).endswith("-> online 40.0 +- 0.0 (last 1 eval)")
    online_only = make_run(tmp_path / "online_only", 0, [1.0, 2.0, 3.0, 4.0], offline=0)
    assert run_summary(online_only) == "normalized score 3.0 +- 0.8 (last 3 evals)"  # no switch, no offline part
    png = plot_run(run)
    assert png == run / "learning_curve.png" and png.read_bytes()[:4] == b"\x89PNG"
    assert plot_run(run, tmp_path / "x" / "c.png", metric="eval/return").is_file()
    with pytest.raises(ValueError, match="no metric 'eval/success'"):
        plot_run(run, metric="eval/success")
