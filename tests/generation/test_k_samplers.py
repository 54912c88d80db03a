"""Samplers, schedules and the denoiser against independent references.

* k-diffusion 0.1.1.post1's own ``sampling.py`` and ``external.py`` (the wheel from the package registry,
  cached in tests/.cache, loaded by path: its package ``__init__`` and ``utils`` import torchvision, which
  cannot be installed here; ``utils.append_dims`` is taken from its ``utils.py`` source, and
  ``torchdiffeq``, used only by ``log_likelihood``, is a stub that refuses to run).
* A1111 1.10's schedule formulas (``sd_schedulers.py``), Restart and LCM written out independently below.
* Every sampler x every schedule type on the tiny depth model, img2img and inpaint.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import sys
import types
import zipfile

import numpy as np
import pytest
import torch

from modules.core import samplers
from modules.core.hooks import Hooks
from modules.core.progress import JobControl
from modules.core.request import GenerationRequest
from modules.core.settings import Settings
from modules.generation import sampling
from modules.generation.processing import ProcessingContext, process
from modules.generation.sampling import dpm_solver, extra, k_samplers, noise, schedules
from modules.generation.sampling.denoiser import KDenoiser
from modules.models.checkpoints import CheckpointRegistry, HashCache
from modules.models.manager import ModelManager
from modules.models.sd_model import ldm_schedule
from tests.helpers import oracle
from tests.helpers.imaging import png

K_DIFFUSION = "k-diffusion==0.1.1.post1"
PKG = "k_diffusion_oracle"


def _load_k_diffusion():
    target = oracle.CACHE / "k_diffusion"
    files = ("k_diffusion/sampling.py", "k_diffusion/external.py", "k_diffusion/utils.py")
    if not all((target / f).is_file() for f in files):
        wheel = oracle._wheel(K_DIFFUSION, "k_diffusion-*.whl")
        if wheel is None:
            return None
        with zipfile.ZipFile(wheel) as z:
            z.extractall(target, list(files))
    pkg = types.ModuleType(PKG)
    pkg.__path__ = [str(target / "k_diffusion")]
    utils = types.ModuleType(f"{PKG}.utils")
    tree = ast.parse((target / "k_diffusion/utils.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "append_dims")
    exec(compile(ast.Module([node], []), "k_diffusion/utils.py", "exec"), utils.__dict__)
    pkg.utils = utils
    stub = types.ModuleType("torchdiffeq")
    stub.odeint = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("torchdiffeq is not installed"))
    saved = {k: sys.modules.get(k) for k in ("torchdiffeq",)}
    sys.modules.update({PKG: pkg, f"{PKG}.utils": utils})
    sys.modules.setdefault("torchdiffeq", stub)
    try:
        mods = {}
        for name in ("sampling", "external"):
            spec = importlib.util.spec_from_file_location(f"{PKG}.{name}", target / f"k_diffusion/{name}.py")
            mods[name] = importlib.util.module_from_spec(spec)
            sys.modules[f"{PKG}.{name}"] = mods[name]
            setattr(pkg, name, mods[name])
            spec.loader.exec_module(mods[name])
    finally:
        if saved["torchdiffeq"] is None and sys.modules.get("torchdiffeq") is stub:
            del sys.modules["torchdiffeq"]
    return types.SimpleNamespace(**mods)


@pytest.fixture(scope="module")
def kd():
    found = _load_k_diffusion()
    if found is None:
        pytest.skip("k-diffusion wheel not available (no package registry)")
    return found


ALPHAS = torch.tensor(ldm_schedule(0.00085, 0.0120, 1000)[1], dtype=torch.float32)
MS = schedules.ModelSigmas(ALPHAS)


def toy(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A smooth nonlinear stand-in for a trained denoiser: x0 = f(x, sigma)."""
    s = sigma.reshape(-1, 1, 1, 1)
    return 0.8 * x / (1 + s**2) ** 0.5 + 0.3 * torch.sin(x + s) * s / (1 + s) + 0.05 * x.mean() * s


def start(seed: int = 0, shape=(2, 4, 6, 5)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def gens(n: int = 2, base: int = 100) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(base + i) for i in range(n)]


def run_both(ours, ref, x, sigmas, kw):
    """Each side with its own copy of the same noise; every step's x and denoised recorded."""
    steps = {"ours": [], "ref": []}
    out = ours(toy, x.clone(), sigmas, callback=lambda d: steps["ours"].append((d["x"], d["denoised"])), **kw("ours"))
    exp = ref(toy, x.clone(), sigmas, callback=lambda d: steps["ref"].append((d["x"], d["denoised"])), **kw("ref"))
    return out, exp, steps


SIGMAS = schedules.karras(6, MS.sigma_min, MS.sigma_max)
GENERATOR = ["sample_euler_ancestral", "sample_dpm_2_ancestral", "sample_dpmpp_2s_ancestral"]
PLAIN = ["sample_euler", "sample_heun", "sample_dpm_2", "sample_lms", "sample_dpmpp_2m"]
BROWNIAN = ["sample_dpmpp_sde", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde"]


@pytest.mark.parametrize("name", PLAIN + GENERATOR + BROWNIAN)
def test_each_sampler_matches_k_diffusion_step_by_step(kd, name):
    x = start() * SIGMAS[0]

    def kw(side):
        if name in GENERATOR:
            return {"noise_sampler": noise.generator_noise(x, gens())}
        if name in BROWNIAN:
            if side == "ours":
                return {"noise_sampler": noise.brownian_noise(x, SIGMAS, [7, 8])}
            lo, hi = SIGMAS[SIGMAS > 0].min(), SIGMAS.max()
            return {"noise_sampler": kd.sampling.BrownianTreeNoiseSampler(x, lo, hi, seed=[7, 8])}
        return {}

    out, exp, steps = run_both(getattr(k_samplers, name), getattr(kd.sampling, name), x, SIGMAS, kw)
    assert len(steps["ours"]) == len(steps["ref"]) == len(SIGMAS) - 1
    for (xa, da), (xb, db) in zip(steps["ours"], steps["ref"], strict=True):
        torch.testing.assert_close(xa, xb, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(da, db, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, exp, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, x)


def test_dpmpp_2m_sde_heun_matches(kd):
    x = start(1) * SIGMAS[0]
    lo, hi = SIGMAS[SIGMAS > 0].min(), SIGMAS.max()
    ours = k_samplers.sample_dpmpp_2m_sde(toy, x, SIGMAS, noise_sampler=noise.brownian_noise(x, SIGMAS, [3, 4]),
                                          solver_type="heun")  # fmt: skip
    ref = kd.sampling.sample_dpmpp_2m_sde(toy, x, SIGMAS, noise_sampler=kd.sampling.BrownianTreeNoiseSampler(
        x, lo, hi, seed=[3, 4]), solver_type="heun")  # fmt: skip
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_dpm_fast_and_adaptive_match(kd, eta):
    x = start(2) * MS.sigma_max
    for ours, ref, args in ((dpm_solver.sample_dpm_fast, kd.sampling.sample_dpm_fast, {"n": 7}),
                            (dpm_solver.sample_dpm_adaptive, kd.sampling.sample_dpm_adaptive, {})):  # fmt: skip
        a = ours(toy, x, 0.03, MS.sigma_max, eta=eta, noise_sampler=noise.generator_noise(x, gens()), **args)
        b = ref(toy, x, 0.03, MS.sigma_max, eta=eta, noise_sampler=noise.generator_noise(x, gens()), **args)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_brownian_noise_is_k_diffusions_and_per_image(kd):
    x = start(3)
    ours = noise.brownian_noise(x, SIGMAS, [11, 12])
    ref = kd.sampling.BrownianTreeNoiseSampler(x, SIGMAS[SIGMAS > 0].min(), SIGMAS.max(), seed=[11, 12])
    alone = noise.brownian_noise(x[1:], SIGMAS, [12])
    for a, b in ((SIGMAS[0], SIGMAS[1]), (SIGMAS[2], SIGMAS[4]), (SIGMAS[1], SIGMAS[3])):
        torch.testing.assert_close(ours(a, b), ref(a, b), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ours(a, b)[1:], alone(a, b))  # image 2 of a batch = its seed alone


# --- A1111's own samplers, written out independently ------------------------------------------------


def test_lcm_matches_a1111_formula():
    x = start(4) * SIGMAS[0]
    ours = k_samplers.sample_lcm(toy, x, SIGMAS, noise_sampler=noise.generator_noise(x, gens()))
    g, ref = gens(), x.clone()
    for i in range(len(SIGMAS) - 1):
        ref = toy(ref, SIGMAS[i] * torch.ones(2))
        if SIGMAS[i + 1] > 0:
            ref = ref + SIGMAS[i + 1] * torch.stack([torch.randn(x.shape[1:], generator=q) for q in g])
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("steps", [8, 24])
def test_restart_matches_a1111_plan(kd, steps):
    sig = schedules.karras(steps, MS.sigma_min, MS.sigma_max)
    x = start(5) * sig[0]
    ours = extra.restart_sampler(toy, x, sig, noise_sampler=noise.generator_noise(x, gens()))
    # A1111's restart_sampler: from 20 steps 9 restart steps from sigma 0.1 up to 2, once
    if steps >= 20:
        sig = kd.sampling.get_sigmas_karras(steps - 9, sig[-2].item(), sig[0].item())
    pairs = [(sig[i], sig[i + 1]) for i in range(len(sig) - 1)]
    if steps >= 20:
        lo = int(torch.argmin(abs(sig - 0.1)))
        hi = int(torch.argmin(abs(sig - 2)))
        up = kd.sampling.get_sigmas_karras(10, sig[lo].item(), sig[hi].item())[:-1]
        pairs = pairs[:lo] + list(zip(up[:-1], up[1:], strict=True)) + pairs[lo:]
    g, ref, last = gens(), x.clone(), None
    for old, new in pairs:
        if last is not None and last < old:
            ref = ref + torch.stack([torch.randn(x.shape[1:], generator=q) for q in g]) * (old**2 - last**2) ** 0.5
        d = kd.sampling.to_d(ref, old, toy(ref, old * torch.ones(2)))
        if new == 0:
            ref = ref + d * (new - old)
        else:
            x2 = ref + d * (new - old)
            ref = ref + (d + kd.sampling.to_d(x2, new, toy(x2, new * torch.ones(2)))) / 2 * (new - old)
        last = new
    assert len(extra.restart_plan(schedules.karras(steps, MS.sigma_min, MS.sigma_max))) == len(pairs)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_ddim_cfgpp_steps_along_the_unconditional_noise():
    ac = ALPHAS.double()
    ts = torch.tensor([901, 601, 301, 1])
    x = start(6)
    eps_c, eps_u = (lambda x_, t: 0.3 * x_), (lambda x_, t: 0.1 * x_ + 0.01 * float(t) / 1000)
    out = extra.ddim_cfgpp(lambda x_, t: (eps_c(x_, t), eps_u(x_, t)), x, ts, ac, float(ac[0]))
    ref = x.clone()
    for i, t in enumerate(ts):
        a, prev = ac[t].item(), (ac[ts[i + 1]].item() if i + 1 < len(ts) else ac[0].item())
        x0 = (ref - (1 - a) ** 0.5 * eps_c(ref, t)) / a**0.5
        ref = prev**0.5 * x0 + (1 - prev) ** 0.5 * eps_u(ref, t)
    torch.testing.assert_close(out, ref)


# --- schedules --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 4, 11, 25])
def test_schedules_match_k_diffusion_and_a1111(kd, n):
    lo, hi = MS.sigma_min, MS.sigma_max
    ref_model = kd.external.CompVisDenoiser(types.SimpleNamespace(alphas_cumprod=ALPHAS))
    ref_model.inner_model = None
    same = torch.testing.assert_close
    same(schedules.karras(n, lo, hi), kd.sampling.get_sigmas_karras(n, lo, hi))
    same(schedules.karras(n, lo, hi, rho=3.0), kd.sampling.get_sigmas_karras(n, lo, hi, rho=3.0))
    same(schedules.exponential(n, lo, hi), kd.sampling.get_sigmas_exponential(n, lo, hi))
    same(schedules.polyexponential(n, lo, hi), kd.sampling.get_sigmas_polyexponential(n, lo, hi))
    same(schedules.uniform(n, lo, hi, MS), ref_model.get_sigmas(n))
    # A1111 1.10 sd_schedulers.py, written out
    t0, t1 = ref_model.sigma_to_t(torch.tensor(hi)), ref_model.sigma_to_t(torch.tensor(lo))
    sgm = [float(ref_model.t_to_sigma(t)) for t in torch.linspace(t0, t1, n + 1)[:-1]] + [0.0]
    same(schedules.sgm_uniform(n, lo, hi, MS), torch.FloatTensor(sgm))
    normal = [float(ref_model.t_to_sigma(t)) for t in torch.linspace(t0, t1, n)] + [0.0]
    same(schedules.normal(n, lo, hi, MS), torch.FloatTensor(normal))
    ss = len(ref_model.sigmas) / n
    simple = [float(ref_model.sigmas[-(1 + int(x * ss))]) for x in range(n)] + [0.0]
    same(schedules.simple(n, lo, hi, MS), torch.FloatTensor(simple))
    step, picked, x = max(len(ref_model.sigmas) // n, 1), [], 1
    while x < len(ref_model.sigmas):
        picked.append(float(ref_model.sigmas[x]))
        x += step
    same(schedules.ddim(n, lo, hi, MS), torch.FloatTensor(picked[::-1] + [0.0]))
    i = torch.arange(n + 1)
    kl = torch.tan(i / n * math.atan(lo) + (1 - i / n) * math.atan(hi))
    same(schedules.kl_optimal(n, lo, hi), kl.float())
    ays = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
    if n == len(ays):
        expected = ays + [0.0]
    else:
        expected = list(np.exp(np.interp(np.linspace(0, 1, n), np.linspace(0, 1, 11), np.log(ays[::-1])))[::-1])
        expected += [0.0]
    same(schedules.align_your_steps(n, lo, hi), torch.FloatTensor(expected))
    from scipy import stats

    beta = [lo + stats.beta.ppf(q, 0.6, 0.6) * (hi - lo) for q in 1 - np.linspace(0, 1, n)] + [0.0]
    same(schedules.beta(n, lo, hi, MS), torch.FloatTensor(beta))


def test_model_sigmas_are_k_diffusions_discrete_schedule(kd):
    ref = kd.external.CompVisDenoiser(types.SimpleNamespace(alphas_cumprod=ALPHAS))
    torch.testing.assert_close(MS.sigmas, ref.sigmas)
    sig = torch.tensor([14.6, 3.3, 0.5, 0.0292])
    torch.testing.assert_close(MS.sigma_to_t(sig), ref.sigma_to_t(sig))
    t = torch.tensor([999.0, 500.25, 3.5, 0.0])
    torch.testing.assert_close(MS.t_to_sigma(t), ref.t_to_sigma(t))


def test_beta_fallback_without_scipy_matches_scipy():
    from scipy import stats

    for q in (0.0, 0.01, 0.3, 0.5, 0.77, 0.999, 1.0):
        assert schedules._beta_ppf_bisect(q, 0.6, 0.6) == pytest.approx(float(stats.beta.ppf(q, 0.6, 0.6)), abs=1e-9)
        assert schedules.beta_cdf(0.3, 0.6, 2.0) == pytest.approx(float(stats.beta.cdf(0.3, 0.6, 2.0)), abs=1e-12)


def test_discard_penultimate_sigma_and_defaults():
    spec = samplers.find_sampler("DPM2")
    assert samplers.resolve_schedule(spec, "Automatic") == "Karras"
    full = schedules.karras(6, MS.sigma_min, MS.sigma_max)
    torch.testing.assert_close(schedules.sigmas_for(spec, "Karras", 5, MS), torch.cat([full[:-2], full[-1:]]))
    euler = samplers.find_sampler("k_euler")
    assert samplers.resolve_schedule(euler, None) == "Automatic"
    torch.testing.assert_close(schedules.sigmas_for(euler, "Automatic", 5, MS), MS.get_sigmas(5))


# --- the table --------------------------------------------------------------------------------------


def test_a1111_names_aliases_and_old_spellings():
    assert samplers.sampler_names() == [
        "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a",
        "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++",
        "PLMS", "UniPC", "LCM"]  # fmt: skip
    assert [s.record()["name"] for s in samplers.SCHEDULES] == [
        "automatic", "uniform", "karras", "exponential", "polyexponential", "sgm_uniform", "kl_optimal",
        "align_your_steps", "simple", "normal", "ddim", "beta"]  # fmt: skip
    assert samplers.find_schedule("SGMUniform").record() == {"name": "sgm_uniform", "label": "SGM Uniform",
        "aliases": ["SGMUniform"], "default_rho": -1.0, "need_inner_model": True}  # fmt: skip
    for old, (name, schedule) in {"DPM++ 2M Karras": ("DPM++ 2M", "Karras"), "k_dpm_2_a": ("DPM2 a", "Karras"),
                                  "DPM++ 2S a Karras": ("DPM++ 2S a", "Karras"), "Euler a": ("Euler a", "Automatic"),
                                  "DPM++ 2M SDE Exponential": ("DPM++ 2M SDE", "Exponential"),
                                  "k_dpm_fast": ("DPM fast", "Automatic"), "ddim": ("DDIM", "Automatic")}.items():  # fmt: skip
        choice = samplers.resolve(old, None)
        assert (choice.spec.name, choice.schedule, choice.warnings) == (name, schedule, ())
    assert samplers.resolve("Euler a", "normal").schedule == "Normal"  # a chat front end's default
    assert samplers.resolve("DDIM", "Karras").schedule == "Karras"  # accepted, ignored by DDIM
    odd = samplers.resolve("Euler", "cosine")
    assert odd.schedule == "Automatic" and "cosine" in odd.warnings[0]


# --- every sampler x every schedule type on the tiny depth model --------------------------------------

W = H = 64


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, depth_ckpt):
    import shutil

    root = tmp_path_factory.mktemp("ksamplers")
    (root / "models").mkdir()
    shutil.copy(depth_ckpt.path, root / "models" / depth_ckpt.path.name)
    shutil.copy(depth_ckpt.config_path, root / "models" / depth_ckpt.config_path.name)
    reg = CheckpointRegistry([root / "models"], HashCache(None))
    reg.refresh()
    mm = ModelManager(reg, device=torch.device("cpu"), dtype=torch.float32, keep_in_memory=1)
    mm.load("tiny-depth")
    return ProcessingContext(mm, Settings(), root, hooks=Hooks(), control=JobControl())


def _picture() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).astype(np.uint8)


@pytest.mark.parametrize("name", samplers.sampler_names())
def test_every_sampler_with_every_schedule_img2img_and_inpaint(ctx, name):
    mask = np.zeros((H, W), np.uint8)
    mask[16:48, 16:48] = 255
    src = _picture()
    base = dict(prompt="a house", init_images=[png(src)], width=W, height=H, steps=2, seed=5, save_images=False,
                sampler_name=name, denoising_strength=0.7)  # fmt: skip
    images = {}
    for schedule in samplers.SCHEDULE_TYPES:
        r = process(GenerationRequest(**base, scheduler=schedule), ctx)
        assert r.images[0].shape == (H, W, 3) and not r.warnings
        images[schedule] = r.images[0]
        painted = process(GenerationRequest(**base, scheduler=schedule, mask=png(mask), mask_blur_x=0,
                                            mask_blur_y=0), ctx)  # fmt: skip
        out = painted.images[0]
        assert np.array_equal(out[mask == 0], src[mask == 0])
    differ = {k for k, v in images.items() if not np.array_equal(v, images["Karras"])}
    spec = samplers.find_sampler(name)
    if spec.kind == "k" and name not in ("DPM fast", "DPM adaptive"):  # those take only the sigma range
        assert differ, "the schedule type changed nothing"
    else:
        assert not differ or name in ("DPM fast", "DPM adaptive"), "a timestep sampler used the schedule type"


def test_k_denoiser_is_compvis_denoiser_with_cfg_depth_and_blend(kd):
    class Fake:
        parameterization = "eps"
        alphas_cumprod = ALPHAS

        def apply_model(self, x, t, cond):
            ctx = cond["c_crossattn"][0]
            depth = cond["c_concat"][0]
            return torch.tanh(x) * ctx.mean(dim=(1, 2)).reshape(-1, 1, 1, 1) + depth + 1e-3 * t.reshape(-1, 1, 1, 1)

    fake = Fake()
    g = sampling.Guidance(cond=torch.full((2, 3, 4), 0.7), uncond=torch.full((2, 3, 4), -0.2),
                          depth=torch.full((2, 1, 6, 5), 0.1), cfg_scale=6.0)  # fmt: skip
    x, sigma = start(7), torch.tensor([3.0, 3.0])
    ours = KDenoiser(fake, g, MS)(x, sigma)
    for param, cls in (("eps", kd.external.CompVisDenoiser), ("v", kd.external.CompVisVDenoiser)):
        fake.parameterization = param
        wrapped = cls(fake)
        ours = KDenoiser(fake, g, MS)(x, sigma)
        both = wrapped(torch.cat([x, x]), torch.cat([sigma, sigma]), cond={"c_concat": [torch.cat([g.depth] * 2)],
                       "c_crossattn": [torch.cat([g.uncond, g.cond])]})  # fmt: skip
        u, c = both.chunk(2)
        torch.testing.assert_close(ours, u + 6.0 * (c - u), rtol=1e-5, atol=1e-5)  # A1111 combines the x0s
    mask = torch.zeros(1, 1, 6, 5)
    mask[..., 2:, :] = 1
    init = start(8)
    blended = KDenoiser(fake, g, MS, sampling.Inpaint(init=init, mask=mask, noise=x))(x, sigma)
    torch.testing.assert_close(blended * (1 - mask), init * (1 - mask))
    torch.testing.assert_close(blended * mask, ours * mask)


def test_ancestral_batch_images_equal_single_runs(ctx):
    req = dict(prompt="x", init_images=[png(_picture())], width=W, height=H, steps=3, save_images=False,
               denoising_strength=0.8)  # fmt: skip
    for name in ("DPM++ SDE", "DPM++ 2S a", "Euler a"):
        batch = process(GenerationRequest(**req, seed=20, batch_size=2, sampler_name=name), ctx)
        alone = process(GenerationRequest(**req, seed=21, sampler_name=name), ctx)
        assert np.abs(batch.images[1].astype(int) - alone.images[0].astype(int)).max() <= 1, name
