import math

import pytest
import torch

from fundusgen.model.flow import (Projection, RectifiedFlowLoss, guided, known_region, sample_euler, sample_heun,
                                  sample_midpoint, sample_t, schedule, shift_t, zero_init)


def test_schedule_runs_from_noise_to_data_and_shift_spends_more_steps_at_high_noise():
    ts = schedule(10)
    assert ts[0] == 1.0 and ts[-1] == 0.0 and torch.all(ts[1:] < ts[:-1])
    shifted = schedule(10, shift=3.0)
    assert shifted[0] == 1.0 and shifted[-1] == 0.0
    assert torch.all(shifted[1:-1] > ts[1:-1])


@pytest.mark.parametrize("sampler", [sample_euler, sample_heun, sample_midpoint])
def test_samplers_transport_noise_to_data_along_a_straight_flow(sampler):
    # For a single data point x0 the rectified-flow velocity is v(x_t, t) = (x_t - x0) / t: straight paths.
    x0 = torch.tensor([[0.5, -1.0, 2.0]])
    eps = torch.randn(1, 3, generator=torch.Generator().manual_seed(0))

    def v(x, t):
        return (x - x0) / t.clamp(min=1e-8).view(-1, 1)
    out = sampler(v, eps.clone(), schedule(8))
    assert torch.allclose(out, x0, atol=1e-5)


def test_heun_is_more_accurate_than_euler_on_a_curved_flow():
    # dx/dt = x has solution x(0) = x(1) * e^-1 when integrated from t=1 to t=0.
    def v(x, t):
        return x
    x1 = torch.ones(1, 1)
    exact = math.exp(-1)
    ts = torch.linspace(1.0, 0.0, 11)
    err_euler = abs(float(sample_euler(v, x1, ts)) - exact)
    ts_heun = torch.cat([torch.linspace(1.0, 0.0, 11)[:-1], torch.tensor([1e-9, 0.0])])
    err_heun = abs(float(sample_heun(v, x1, ts_heun)) - exact)
    assert err_heun < err_euler / 5


def test_rectified_flow_loss_is_zero_for_the_exact_velocity():
    x0 = torch.zeros(4, 2, 3, 3)  # data at the origin: x_t = t * eps, so v = eps = x_t / t

    def model(x, t, text, mask):
        return x / t.view(-1, 1, 1, 1)
    loss = RectifiedFlowLoss("uniform")(model, x0, None, None, torch.Generator().manual_seed(0))
    assert float(loss) < 1e-8


def test_rectified_flow_loss_is_positive_for_a_wrong_velocity():
    def model(x, t, text, mask):
        return torch.zeros_like(x)
    loss = RectifiedFlowLoss()(model, torch.ones(4, 2, 3, 3), None, None, torch.Generator().manual_seed(0))
    assert float(loss) > 0.5


def test_a_spatial_weight_averages_the_squared_error_with_its_weights():
    def model(x, t, text, mask):  # wrong everywhere except in the left column of every latent
        v = torch.zeros_like(x)
        v[..., 0] = 5.0
        return v
    x0 = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    loss = lambda w: float(RectifiedFlowLoss()(model, x0, None, None, torch.Generator().manual_seed(0), 1.0, w))
    plain = loss(None)
    assert loss(torch.ones(3, 1, 2, 2)) == pytest.approx(plain, rel=1e-6)  # uniform weights: the plain mean
    assert loss(torch.full((3, 1, 2, 2), 7.0)) == pytest.approx(plain, rel=1e-6)  # the scale of the weights cancels
    left, right = torch.zeros(3, 1, 2, 2), torch.zeros(3, 1, 2, 2)
    left[..., 0], right[..., 1] = 1.0, 1.0
    assert loss(left) > 10 * loss(right)  # only the weighted cells count
    assert loss(1 + 4 * left) > plain > loss(1 + 4 * right)


def test_the_loss_trains_at_time_shifted_timesteps():
    seen = {}

    def model(x, t, text, mask):
        seen.setdefault("t", []).append(t.clone())
        return torch.zeros_like(x)
    for shift in (1.0, 3.0):
        RectifiedFlowLoss()(model, torch.ones(4096, 1, 1, 1), None, None, torch.Generator().manual_seed(0), shift)
    plain, shifted = seen["t"]
    assert torch.allclose(shifted, shift_t(plain, 3.0)) and torch.allclose(shift_t(torch.tensor([0.5]), 3.0), torch.tensor([0.75]))
    assert float(shifted.median()) > 0.7 and abs(float(plain.median()) - 0.5) < 0.02  # towards noise


def test_logit_normal_timesteps_concentrate_in_the_middle():
    t = sample_t(20000, torch.Generator().manual_seed(0), "logit_normal")
    assert 0 < float(t.min()) and float(t.max()) < 1
    assert abs(float(t.mean()) - 0.5) < 0.01
    assert float(((t > 0.25) & (t < 0.75)).float().mean()) > 0.6  # uniform would give 0.5
    with pytest.raises(ValueError):
        sample_t(3, torch.Generator(), "cosine")


def test_guidance_extrapolates_from_unconditional_to_conditional_on_every_channel():
    vc, vu = torch.full((1, 4, 2, 2), 2.0), torch.full((1, 4, 2, 2), 1.0)
    v = guided(lambda x, t: (vc, vu), 4.0)(None, None)
    assert torch.allclose(v, torch.full_like(v, 1.0 + 4.0 * 1.0))


def test_guidance_in_an_interval_guides_only_inside_it_and_uses_the_conditional_velocity_elsewhere():
    vc, vu = torch.full((1, 4, 2, 2), 2.0), torch.full((1, 4, 2, 2), 1.0)
    calls = []

    def conditional(x, t):
        calls.append(float(t[0]))
        return vc
    v = guided(lambda x, t: (vc, vu), 4.0, (0.25, 0.75), conditional)
    assert torch.allclose(v(None, torch.tensor([0.5])), torch.full_like(vc, 5.0))
    assert torch.allclose(v(None, torch.tensor([0.75])), torch.full_like(vc, 5.0))  # (low, high]
    assert torch.allclose(v(None, torch.tensor([0.875])), vc) and torch.allclose(v(None, torch.tensor([0.25])), vc)
    assert calls == [0.875, 0.25]  # outside the interval: one conditional pass, no unconditional one


def test_projected_guidance_drops_the_update_parallel_to_the_denoised_prediction():
    g = torch.Generator().manual_seed(0)
    x, vc, vu = (torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0.5, 0.25], dtype=torch.float64)
    tt = t.view(-1, 1, 1, 1)
    both = lambda x, t: (vc, vu)
    cfg = guided(both, 4.0)(x, t)
    # eta 1 with no momentum or threshold is classifier-free guidance, to the float
    assert torch.allclose(guided(both, 4.0, projection=Projection(1.0))(x, t), cfg)
    # by hand, on the denoised predictions x0 = x - t v: x0 = x0_c + (s - 1) d_orth, d_orth orthogonal to x0_c
    x0c, x0u = x - tt * vc, x - tt * vu
    d = x0c - x0u
    unit = x0c / x0c.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    d_orth = d - (d * unit).flatten(1).sum(1).view(-1, 1, 1, 1) * unit
    expected = (x - (x0c + 3.0 * d_orth)) / tt
    v = guided(both, 4.0, projection=Projection(0.0))(x, t)
    assert torch.allclose(v, expected)
    x0 = x - tt * v
    assert torch.allclose(((x0 - x0c) * x0c).flatten(1).sum(1), torch.zeros(2, dtype=torch.float64), atol=1e-9)
    # the threshold caps the update's length at r; other references (autoguidance) keep their plain terms
    capped = x - tt * guided(both, 4.0, projection=Projection(1.0, threshold=0.1))(x, t)
    assert torch.allclose((capped - x0c).flatten(1).norm(dim=1), torch.full((2,), 0.3, dtype=torch.float64))
    vg = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)
    with_guide = guided(lambda x, t: (vc, vu, vg), (4.0, 2.0), projection=Projection(0.0))(x, t)
    assert torch.allclose(with_guide, expected + (vc - vg))


def test_projected_guidance_momentum_carries_the_previous_update_within_one_sampling_run():
    x, t = torch.zeros(1, 1, 1, 2, dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    updates = iter([(torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[0.0, 0.0]]]]))] * 2)
    v = guided(lambda x, t: next(updates), 2.0, projection=Projection(1.0, momentum=-0.5))
    first, second = v(x, t), v(x, t)
    # x0 = -v at x = 0, t = 1; the update d = x0_c - x0_u = (-1, 0); then d - 0.5 d_prev = (-0.5, 0)
    assert torch.allclose(first, torch.tensor([[[[2.0, 0.0]]]], dtype=torch.float64))
    assert torch.allclose(second, torch.tensor([[[[1.5, 0.0]]]], dtype=torch.float64))
    fresh = guided(lambda x, t: (torch.tensor([[[[1.0, 0.0]]]]), torch.zeros(1, 1, 1, 2)), 2.0,
                   projection=Projection(1.0, momentum=-0.5))
    assert torch.allclose(fresh(x, t), first)  # a new run starts without momentum


def test_zero_star_guides_from_the_unconditional_velocity_scaled_to_fit_the_conditional_one():
    vc = torch.tensor([[[[2.0, 1.0]]], [[[1.0, 0.0]]]])
    vu = torch.tensor([[[[1.0, 0.0]]], [[[2.0, 2.0]]]])
    # s* = <v_c, v_u> / |v_u|^2 per image: 2 and 1/4; v = s* v_u + s (v_c - s* v_u)
    star = torch.tensor([2.0, 0.25]).view(-1, 1, 1, 1)
    expected = star * vu + 4.0 * (vc - star * vu)
    assert torch.allclose(guided(lambda x, t: (vc, vu), 4.0, zero_star=True)(None, None), expected)
    # a v_u parallel to v_c differs only in scale: it fits v_c exactly, and nothing is left to guide by
    assert torch.allclose(guided(lambda x, t: (vc, vc / 2), 4.0, zero_star=True)(None, None), vc)


def test_zero_init_leaves_the_noise_alone_for_the_first_steps_and_skips_the_network():
    calls = []

    def v(x, t):
        calls.append(round(float(t[0]), 2))
        return torch.ones_like(x)
    ts = schedule(4)
    x = sample_euler(zero_init(v, float(ts[1])), torch.zeros(1, 1, 1, 1), ts)
    assert calls == [0.75, 0.5, 0.25]  # t = 1 not evaluated
    assert float(x) == pytest.approx(-0.75)  # three of the four steps of length 1/4 moved x


@pytest.mark.parametrize("sampler", [sample_euler, sample_heun, sample_midpoint])
def test_known_region_ends_on_the_known_data_and_leaves_the_rest_to_the_network(sampler):
    g = torch.Generator().manual_seed(1)
    noise, x_known, x_free = (torch.randn(2, 1, 4, 4, generator=g) for _ in range(3))
    known = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    known[..., :2] = True

    def v(x, t):  # a network whose flow goes straight to x_free everywhere
        return (x - x_free) / t.clamp(min=1e-8).view(-1, 1, 1, 1)
    out = sampler(known_region(v, noise, x_known, known), noise.clone(), schedule(6))
    assert torch.allclose(out[..., :2], x_known[..., :2], atol=1e-5)
    assert torch.allclose(out[..., 2:], x_free[..., 2:], atol=1e-5)
    # and the network saw the known part on its straight path at every step
    seen = []
    sample_euler(known_region(lambda x, t: seen.append((x.clone(), t[0])) or torch.zeros_like(x), noise, x_known, known),
                 noise.clone(), schedule(4))
    for x, t in seen:
        assert torch.allclose(x[..., :2], ((1 - t) * x_known + t * noise)[..., :2], atol=1e-6)
