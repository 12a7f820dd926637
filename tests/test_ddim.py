"""DDIM step math against diffusers and against the null-text inversion reference's own step functions.

The contract is the reference's `next_step` (null_text_w_ptp.ipynb): x_t comes from x_{t-stride} with the
network evaluated at the destination level t, the *current* sample read at level t - stride, and
final_alpha_cumprod used when t - stride < 0. diffusers' DDIMInverseScheduler configured from the same
scheduler config makes exactly the same move (it is the reference's next_step with prediction types added):
its set_timesteps gives the sampling timesteps in ascending order (steps_offset included, so the first
inversion step is t=1 whose source level -19 reads initial_alpha_cumprod = alphas_cumprod[0], because the
config carries set_alpha_to_one=False), and step(out, t, x) moves from t - stride to t. So no convention
differs and the trajectories are compared step for step.

Both sides keep x in fp32; diffusers multiplies by fp32 alphas where we use fp64 alphas, so they agree to
about 1e-7 relative per step: 1e-5 is two orders above that and far below any real mistake (a level off by
one stride changes a step by ~1e-2 here).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMInverseScheduler, DDIMScheduler

from editing.core.ddim import DDIMSchedule, ddim_move, inversion_step, sampling_step, split_output
from inversion.ddim import ddim_inversion

TOL = dict(rtol=1e-5, atol=1e-5)
STEP_COUNTS = (10, 50, 7)  # 7 does not divide 1000: stride 142, timesteps 1..853


@pytest.fixture(params=["epsilon", "v_prediction"])
def model(request, tiny_model, tiny_v_model):
    return tiny_model if request.param == "epsilon" else tiny_v_model


def make_denoiser(seed: int = 0):
    """A fixed, deterministic stand-in for the UNet: a small random conv of x plus a term in t, so an error
    in the level the network is evaluated at, or in the sample it sees, changes the result."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(4, 4, 3, 3, generator=g) * 0.3
    calls = []

    def denoise(x: torch.Tensor, t, cond=None) -> torch.Tensor:
        calls.append(int(t))
        return 0.5 * torch.tanh(F.conv2d(x, weight, padding=1)) + 0.2 * int(t) / 1000

    denoise.calls = calls
    return denoise


def start_latent(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g)


def reference_next_step(scheduler, model_output, timestep, sample):
    """The null-text inversion reference's `next_step`, transcribed (epsilon), with v_prediction converted to
    (x0, eps) at the level of the current sample, as the contract says."""
    timestep, next_timestep = min(
        timestep - scheduler.config.num_train_timesteps // scheduler.num_inference_steps, 999), timestep
    alpha_prod_t = scheduler.alphas_cumprod[timestep] if timestep >= 0 else scheduler.final_alpha_cumprod
    alpha_prod_t_next = scheduler.alphas_cumprod[next_timestep]
    beta_prod_t = 1 - alpha_prod_t
    if scheduler.config.prediction_type == "v_prediction":
        next_original_sample = alpha_prod_t ** 0.5 * sample - beta_prod_t ** 0.5 * model_output
        model_output = alpha_prod_t ** 0.5 * model_output + beta_prod_t ** 0.5 * sample
    else:
        next_original_sample = (sample - beta_prod_t ** 0.5 * model_output) / alpha_prod_t ** 0.5
    next_sample_direction = (1 - alpha_prod_t_next) ** 0.5 * model_output
    return alpha_prod_t_next ** 0.5 * next_original_sample + next_sample_direction


# ---------------------------------------------------------------- the schedule


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_schedule_matches_the_models_scheduler(model, steps):
    schedule = DDIMSchedule.from_scheduler(model.scheduler, steps)
    reference = DDIMScheduler.from_config(model.scheduler.config)
    reference.set_timesteps(steps)
    assert schedule.timesteps == tuple(int(t) for t in reference.timesteps)
    assert schedule.timesteps[-1] == 1 and schedule.stride == 1000 // steps  # steps_offset=1, "leading"
    assert schedule.prediction_type == model.prediction_type
    # set_alpha_to_one=False: the level below the first training step is alphas_cumprod[0], as in the reference
    assert schedule.final_alpha_cumprod == pytest.approx(float(reference.alphas_cumprod[0]))
    assert schedule.alpha(-19) == schedule.final_alpha_cumprod
    assert schedule.alpha(981) == pytest.approx(float(reference.alphas_cumprod[981]), rel=1e-6)


def test_schedule_rejects_zero_steps(tiny_model):
    with pytest.raises(ValueError, match="at least 1"):
        DDIMSchedule.from_scheduler(tiny_model.scheduler, 0)


# ---------------------------------------------------------------- (a) inversion


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_inversion_trajectory_equals_diffusers_inverse_scheduler(model, steps):
    schedule = DDIMSchedule.from_scheduler(model.scheduler, steps)
    inverse = DDIMInverseScheduler.from_config(model.scheduler.config)
    inverse.set_timesteps(steps)
    # The convention they share: the inverse scheduler walks the sampling timesteps upwards.
    assert tuple(int(t) for t in inverse.timesteps) == schedule.timesteps[::-1]
    assert float(inverse.initial_alpha_cumprod) == pytest.approx(schedule.final_alpha_cumprod)
    assert inverse.config.prediction_type == model.prediction_type and not inverse.config.clip_sample

    denoise = make_denoiser()
    ours = ddim_inversion(denoise, start_latent(), None, schedule)
    assert denoise.calls == list(schedule.timesteps[::-1])  # the network is evaluated at the destination t
    assert len(ours) == steps + 1 and torch.equal(ours[0], start_latent())

    x = start_latent()
    for k, t in enumerate(inverse.timesteps):
        x = inverse.step(denoise(x, int(t)), int(t), x).prev_sample
        torch.testing.assert_close(ours[k + 1], x, **TOL, msg=lambda m: f"inversion step {k} (t={int(t)}): {m}")


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_inversion_step_is_the_references_next_step(model, steps):
    schedule = DDIMSchedule.from_scheduler(model.scheduler, steps)
    reference = DDIMScheduler.from_config(model.scheduler.config)
    reference.set_timesteps(steps)
    denoise = make_denoiser(seed=2)
    ours = ddim_inversion(denoise, start_latent(), None, schedule)
    latent = start_latent()
    for i in range(steps):  # the reference's ddim_loop
        t = int(reference.timesteps[len(reference.timesteps) - i - 1])
        latent = reference_next_step(reference, denoise(latent, t), t, latent)
        torch.testing.assert_close(ours[i + 1], latent, **TOL)


def test_first_inversion_step_reads_final_alpha_for_the_current_sample(tiny_model):
    """t=1 moves from level 1 - stride < 0, i.e. from final_alpha_cumprod, to alphas_cumprod[1]."""
    schedule = DDIMSchedule.from_scheduler(tiny_model.scheduler, 50)
    x, out = start_latent(), start_latent(seed=3)
    a_from, a_to = schedule.final_alpha_cumprod, float(schedule.alphas_cumprod[1])
    x0 = (x - (1 - a_from) ** 0.5 * out) / a_from ** 0.5
    expected = a_to ** 0.5 * x0 + (1 - a_to) ** 0.5 * out
    torch.testing.assert_close(inversion_step(schedule, out, 1, x), expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- (b) sampling


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_sampling_step_equals_diffusers_ddim_step(model, steps):
    schedule = DDIMSchedule.from_scheduler(model.scheduler, steps)
    reference = DDIMScheduler.from_config(model.scheduler.config)
    reference.set_timesteps(steps)
    denoise = make_denoiser(seed=4)
    ours = theirs = start_latent() * 3  # a noisy start
    for t in schedule.timesteps:  # the whole loop, down to the last step that reads final_alpha_cumprod
        ours = sampling_step(schedule, denoise(ours, t), t, ours)
        theirs = reference.step(denoise(theirs, t), t, theirs, eta=0.0).prev_sample
        torch.testing.assert_close(ours, theirs, **TOL, msg=lambda m: f"sampling step at t={t}: {m}")
    # and one isolated step at every level, from the same sample
    x, out = start_latent(seed=5), start_latent(seed=6)
    for t in schedule.timesteps:
        torch.testing.assert_close(sampling_step(schedule, out, t, x),
                                   reference.step(out, t, x, eta=0.0).prev_sample, **TOL)


def test_sampling_undoes_inversion_for_a_constant_noise_prediction(tiny_model):
    """With eps independent of x, a DDIM step is an exact affine map and inversion is its inverse."""
    schedule = DDIMSchedule.from_scheduler(tiny_model.scheduler, 10)
    x, eps = start_latent(), start_latent(seed=7)
    for t in schedule.timesteps:
        torch.testing.assert_close(sampling_step(schedule, eps, t, inversion_step(schedule, eps, t, x)), x,
                                   rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- (c) split_output


@pytest.mark.parametrize("a", [0.999, 0.5, 0.0047, 0.1])
def test_split_output_recovers_x0_and_eps(a):
    g = torch.Generator().manual_seed(8)
    x0 = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    x_t = a ** 0.5 * x0 + (1 - a) ** 0.5 * eps
    v = a ** 0.5 * eps - (1 - a) ** 0.5 * x0  # Salimans & Ho
    for output, kind in ((eps, "epsilon"), (v, "v_prediction")):
        got_x0, got_eps = split_output(output, x_t, a, kind)
        torch.testing.assert_close(got_x0, x0, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(got_eps, eps, rtol=1e-9, atol=1e-9)
        # a DDIM move to any level b lands on sqrt(b) x0 + sqrt(1-b) eps; to the same level it is the identity
        for b in (0.9, 0.3, a):
            torch.testing.assert_close(ddim_move(output, x_t, a, b, kind), b ** 0.5 * x0 + (1 - b) ** 0.5 * eps,
                                       rtol=1e-9, atol=1e-9)


def test_split_output_rejects_unknown_prediction_type():
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="sample"):
        split_output(x, x, 0.5, "sample")
