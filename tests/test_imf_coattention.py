"""Under the attention rollout, a co-attention stack's inter-modality flow is fixed by the residual
weight whatever its attention probabilities: random attention matches the closed form."""

import numpy as np
import pytest

from vlfm.evaluators.flow import co_attention_flow, co_attention_imf, modality_flow


def _stochastic(rng, *shape):
    x = rng.random(shape) ** 3  # uneven rows
    return x / x.sum(-1, keepdims=True)


@pytest.mark.parametrize("residual", [0.5, 0.3, 0.0])
def test_co_attention_imf_does_not_depend_on_the_attention(residual):
    rng = np.random.default_rng(0)
    batch, layers, lt, li = 3, 4, 5, 7
    flow = np.broadcast_to(np.eye(lt + li), (batch, lt + li, lt + li))
    composed = []
    for _ in range(layers):
        m = co_attention_flow(_stochastic(rng, batch, lt, lt), _stochastic(rng, batch, lt, li),
                              _stochastic(rng, batch, li, li), _stochastic(rng, batch, li, lt), residual)
        np.testing.assert_allclose(m.sum(-1), 1.0)  # a flow: every row keeps its mass
        flow = m @ flow
        composed.append(flow)
    modality = np.array([0] * lt + [1] * li)
    imf = modality_flow(np.stack(composed, 1), np.tile(modality, (batch, 1)))["imf"]
    np.testing.assert_allclose(imf, np.broadcast_to(co_attention_imf(layers, residual), (batch, layers)))
    if residual == 0.3:  # not a constant of the formula: the share moves with depth
        assert len(set(np.round(co_attention_imf(layers, residual), 6))) == layers
