"""The paper's 2D bandit (recipes/bandit2d.py, fast T = 5 mode): diffusion BC keeps the four modes, Gaussian BC
averages them, Diffusion-QL concentrates on the reward-5 mode."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from diffrl.data.toy import BANDIT_MODES
from diffrl.diffusion import ddpm
from diffrl.diffusion.schedules import DiffusionSchedule
from diffrl.train import load_config

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "bandit2d.py"
MODES = ("reward_3", "reward_0", "reward_1.5", "reward_5")


def load_recipe():
    spec = importlib.util.spec_from_file_location("recipe_bandit2d", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recipe():
    return load_recipe()


def test_quadrant_fractions_count_each_mode_and_the_rest(recipe):
    actions = torch.tensor(
        [[0.8, -0.8], [0.5, -0.9], [-0.8, 0.8], [0.8, 0.8], [-0.5, -0.5], [0.3, -0.9], [0.0, 0.0], [0.9, -0.41]]
    )
    fractions = recipe.quadrant_fractions(actions)
    assert fractions == pytest.approx(
        {"reward_3": 1 / 8, "reward_0": 1 / 8, "reward_1.5": 1 / 8, "reward_5": 3 / 8, "elsewhere": 2 / 8}
    )


def run_fast(recipe, tmp_path, *overrides: str) -> dict:
    cfg = load_config(RECIPE, ["config=fast", f"logger.dir={tmp_path / 'run'}", "threads=1", *overrides])
    return recipe.main(cfg)


def assert_png(path: str) -> None:
    figure = Path(path)
    assert figure.is_file() and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000


def test_short_bandit_run_puts_diffusion_ql_on_the_reward_5_mode_and_saves_the_figure(recipe, tmp_path):
    """A few hundred updates: the Q term has already moved Diffusion-QL onto the best mode, not the BC policy."""
    result = run_fast(recipe, tmp_path, "offline.steps=300", "eval.samples=400")
    ql, bc = result["fractions"]["Diffusion-QL"], result["fractions"]["Diffusion BC"]
    assert ql["reward_5"] >= 0.8, ql
    assert bc["reward_5"] <= 0.4, bc  # same data, same network, no Q term: not concentrated there
    assert_png(result["figure"])


def exact_bandit_denoiser(schedule):
    """The optimal epsilon-prediction for the bandit's action distribution (4 Gaussians, std 0.05), in closed form."""
    abar = torch.as_tensor([float(v) for v in schedule.floats["alphas_cumprod"]])

    def eps(x_t, step, condition):
        a = abar[torch.as_tensor(step).expand(x_t.shape[:-1])][..., None, None]  # [N, 1, 1]
        var = a * 0.05**2 + 1 - a
        diff = x_t.unsqueeze(-2) - a.sqrt() * BANDIT_MODES  # [N, 4, 2]
        weights = torch.softmax(-(diff**2).sum(-1, keepdim=True) / (2 * var), dim=-2)
        score = -(weights * diff).sum(-2) / var.squeeze(-1)
        return -(1 - a.squeeze(-1)).sqrt() * score

    return eps


@pytest.mark.parametrize(("steps", "low", "high"), [(5, 0.15, 0.20), (50, 0.23, 0.27)])
def test_even_an_exact_denoiser_blurs_the_modes_at_t_5(recipe, steps, low, high):
    """The ceiling a trained diffusion BC can reach with Diffusion-QL's sampler: at T = 5 about 17.5% per quadrant
    (30% of the samples fall between the modes), at T = 50 the full 25%. The fast test's thresholds follow from it."""
    torch.manual_seed(0)
    schedule = DiffusionSchedule.from_name("vp", steps)
    samples = ddpm.sample_diffusion_ql(exact_bandit_denoiser(schedule), schedule, None, (4000, 2))
    fractions = recipe.quadrant_fractions(samples)
    assert all(low <= fractions[mode] <= high for mode in MODES), fractions


@pytest.mark.slow
def test_fast_bandit_reproduces_the_papers_three_behaviours(recipe, tmp_path):
    """About 1.5 CPU-minutes. Diffusion BC gets >= 10% per quadrant rather than the issue's 15%: at T = 5 the exact
    denoiser itself reaches only 17.5% (see above), so 15% would fail on sampling noise alone."""
    result = run_fast(recipe, tmp_path, "eval.samples=1000")
    ql, bc, gauss = (result["fractions"][name] for name in ("Diffusion-QL", "Diffusion BC", "Gaussian BC"))
    # Diffusion-QL: on the reward-5 mode (x > 0.4, y < -0.4)
    assert ql["reward_5"] >= 0.8, ql
    # diffusion BC: every mode
    assert all(bc[mode] >= 0.10 for mode in MODES) and bc["elsewhere"] <= 0.5, bc
    # Gaussian BC: one wide blob over the modes, so about half its samples fall between the quadrants
    assert gauss["elsewhere"] >= 0.4, gauss
    assert_png(result["figure"])
