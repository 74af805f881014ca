"""EDIS guidance strength: on a toy whose online states are shifted from the offline ones, the default transform's
guided samples must reach the online states (exact guidance at weight 1 samples the online distribution).

The diffusion model is fit on offline + online data, the energies on the online data only; the toy's dynamics and
reward are the same online and offline, so a correct guided sampler moves the whole transition to the online states.
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from diffrl import registry

SHIFT = 2.0  # online states ~ N(SHIFT, I), offline ~ N(0, I); a quarter of the diffusion's data is online
A, B = 0.9, 0.5
# a small denoiser so the fit takes seconds; everything about the energies and the guidance is the default
SMALL_DENOISER = {
    "diffusion_steps": 800,
    "num_samples": 2000,
    "sampler_steps": 24,
    "denoiser": {"width": 64, "blocks": 2, "embed_dim": 32},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread is fastest


def transitions(n: int, gen: torch.Generator, state_mean: float) -> TensorDict:
    s = torch.randn(n, 2, generator=gen) + state_mean
    a = torch.rand(n, 1, generator=gen) * 2 - 1
    return TensorDict(
        {
            "observation": s,
            "action": a,
            "next": {"observation": A * s + B * a, "reward": -s.abs().sum(-1, keepdim=True)},
        },
        [n],
    )


@pytest.fixture(scope="module")
def shifted_fit():
    gen = torch.Generator().manual_seed(0)
    offline, online = transitions(1500, gen, 0.0), transitions(500, gen, SHIFT)
    edis = registry.build("transform", {"name": "edis", **SMALL_DENOISER, "seed": 0}, obs_dim=2, action_dim=1)
    with pytest.warns(UserWarning, match="untrained energies"):  # no policy given: the policy energy is skipped
        edis.fit(torch.cat([offline, online]), online=online)
    return edis


def shift_fraction(edis, **config) -> tuple[float, float, float]:
    """(fraction of the mean shift toward the online states covered by guidance, guided state std, dynamics error)."""
    old = {key: getattr(edis.config, key) for key in config}
    try:
        for key, value in config.items():
            setattr(edis.config, key, value)
        plain = edis.manual_seed(1).sample(2000, guided=False)
        with pytest.warns(UserWarning, match="untrained energies"):
            guided = edis.manual_seed(1).sample(2000, guided=True)
    finally:
        for key, value in old.items():
            setattr(edis.config, key, value)
    p, g = plain["observation"], guided["observation"]
    fraction = ((g.mean(0) - p.mean(0)) / (SHIFT - p.mean(0))).mean().item()
    dynamics = (guided["next", "observation"] - A * g - B * guided["action"]).abs().mean().item()
    return fraction, g.std(0).mean().item(), dynamics


def test_default_guidance_steers_most_of_the_way_to_the_online_states(shifted_fit):
    plain_mean = shifted_fit.manual_seed(1).sample(2000, guided=False)["observation"].mean().item()
    assert 0.2 < plain_mean < 0.9  # the prior is the mixture: a quarter of it online
    fraction, spread, dynamics = shift_fraction(shifted_fit)
    assert fraction >= 0.8, fraction  # the old default (masked, unscaled, 200 energy steps) reached 0.36
    assert 0.8 < spread < 1.3, spread  # the online states' spread is 1: not collapsed onto a point
    assert dynamics < 0.1, dynamics  # the guided transitions still follow the dynamics


def test_masking_each_energy_to_its_block_loses_half_the_shift(shifted_fit):
    # the state energy reads the whole transition (s' and r carry the state too); moving only s ignores that evidence
    masked, _, _ = shift_fraction(shifted_fit, mask_guidance=True)
    full, _, _ = shift_fraction(shifted_fit)
    assert masked < full - 0.2, (masked, full)
