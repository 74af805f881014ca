"""torch.compile of the offline-to-online losses (Cal-QL, IQL, QSM's critic): one graph, and the eager values.

The recipes' ``compile: true`` wraps these loss forwards in ``torch.compile``. A graph break would silently fall back to
eager Python between graphs, so each path is traced with ``fullgraph=True`` (which raises on a break). Tracing with
the ``eager`` backend checks the graph without code generation; the slow tests run inductor and compare the compiled
values and gradients with eager ones (``fallback_random`` makes inductor draw the same random numbers as eager).
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from diffrl import registry

OBS, ACT, BATCH = 3, 2, 16

pytestmark = [pytest.mark.filterwarnings("ignore:No target network updater"), pytest.mark.usefixtures("one_thread")]


def make_batch() -> TensorDict:
    g = torch.Generator().manual_seed(0)
    return TensorDict(
        {
            "observation": torch.randn(BATCH, OBS, generator=g),
            "action": torch.rand(BATCH, ACT, generator=g) * 1.8 - 0.9,
            "mc_return": torch.randn(BATCH, 1, generator=g),
            ("next", "observation"): torch.randn(BATCH, OBS, generator=g),
            ("next", "reward"): torch.randn(BATCH, 1, generator=g),
            ("next", "done"): torch.zeros(BATCH, 1, dtype=torch.bool),
            ("next", "terminated"): torch.rand(BATCH, 1, generator=g) < 0.2,
        },
        batch_size=[BATCH],
    )


def build(path: str):
    """``(loss, fn)``: the recipe's default components at toy sizes and the function its update compiles."""
    dims = {"obs_dim": OBS, "action_dim": ACT}
    bounds = {"action_low": -torch.ones(ACT), "action_high": torch.ones(ACT)}
    torch.manual_seed(0)
    if path == "cal_ql":
        actor = registry.build("actor", {"name": "tanh_normal", "hidden_sizes": [16]}, **dims, **bounds)
        critic = registry.build("critic", {"name": "twin_q", "hidden_sizes": [16], "activation": "relu"}, **dims)
        loss = registry.build(
            "loss", {"name": "cal_ql", "cql_n_actions": 3}, actor_network=actor, qvalue_network=critic
        )
    elif path == "iql":
        actor = registry.build("actor", {"name": "gaussian", "hidden_sizes": [16]}, **dims, **bounds)
        critic = registry.build("critic", {"name": "q", "hidden_sizes": [16], "activation": "relu"}, **dims)
        value = registry.build("critic", {"name": "value", "hidden_sizes": [16], "activation": "relu"}, **dims)
        loss = registry.build(
            "loss",
            {"name": "iql", "loss_function": "l2"},
            actor_network=actor,
            qvalue_network=critic,
            value_network=value,
        )
    else:  # qsm: the critic term, or the actor term (path "qsm_actor")
        actor = registry.build(
            "actor",
            {"name": "diffusion", "network": "qsm", "sampler": "qsm", "num_steps": 3, "hidden_sizes": [16]},
            **dims,
        )
        critic = registry.build("critic", {"name": "twin_q", "hidden_sizes": [16], "activation": "relu"}, **dims)
        loss = registry.build("loss", {"name": "qsm"}, actor_network=actor, qvalue_network=critic)
        return loss, lambda batch: (loss.actor_loss if path == "qsm_actor" else loss.qvalue_loss)(batch)[0]
    loss.make_value_estimator(gamma=0.99)

    def summed(batch):
        return sum(value for key, value in loss(batch).items() if key.startswith("loss_"))

    return loss, summed


# Tracing Cal-QL's and IQL's forward takes ~30 s on a loaded 2-core machine: slow; QSM's critic term ~10 s.
# QSM's actor term: the score target's action gradient (torch.func.grad) inside the graph.
PATHS = [
    pytest.param("cal_ql", marks=pytest.mark.slow),
    pytest.param("iql", marks=pytest.mark.slow),
    "qsm",
    pytest.param("qsm_actor", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("path", PATHS)
def test_loss_traces_as_one_graph(path):
    torch._dynamo.reset()
    loss, fn = build(path)
    compiled = torch.compile(fn, backend="eager", fullgraph=True)  # fullgraph: a graph break raises
    torch.manual_seed(1)
    value = compiled(make_batch())
    torch.manual_seed(1)
    torch.testing.assert_close(value, fn(make_batch()), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
def test_inductor_matches_eager(path):
    torch._dynamo.reset()
    loss, fn = build(path)
    params = [p for p in loss.parameters() if p.requires_grad]
    with torch._inductor.config.patch(fallback_random=True):
        compiled = torch.compile(fn, fullgraph=True)
        values, grads = [], []
        for f in (compiled, fn):
            torch.manual_seed(1)
            value = f(make_batch())
            values.append(value.detach())
            grads.append(torch.autograd.grad(value, params, allow_unused=True))
    torch.testing.assert_close(values[0], values[1], rtol=1e-4, atol=1e-5)
    for compiled_grad, eager_grad in zip(*grads, strict=True):
        assert (compiled_grad is None) == (eager_grad is None)
        if eager_grad is not None:
            torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-3, atol=1e-5)
