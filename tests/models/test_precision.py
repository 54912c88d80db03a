"""CPU precision plans (modules.models.precision): the probe's decision and its overrides, bfloat16 UNet
weights made once at load and kept through checkpoint switches, float32 (--precision full) exactly
as before, MiDaS in float32, the VAE in channels-last bfloat16 with its float32 fallback, and the
bfloat16 outputs close to float32's."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from modules.core.hooks import Hooks
from modules.core.progress import JobControl
from modules.core.request import GenerationRequest
from modules.core.settings import Settings
from modules.generation.processing import ProcessingContext, process
from modules.models import checkpoints, optimizations, precision
from modules.models.checkpoints import CheckpointRegistry, HashCache, load_model
from modules.models.manager import ModelManager
from modules.models.precision import PrecisionPlan, ProbeResult

CPU = torch.device("cpu")
W, H = 96, 64
FAST = ProbeResult(10.0, 2.0, 20.0, 5.0, 0.05, 2)  # bfloat16 5x / 4x faster
SLOW = ProbeResult(1.0, 300.0, None, None, 0.01, 2)  # emulated bfloat16 (AVX2)


def png(seed: int = 0) -> bytes:
    import io

    from PIL import Image

    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([xx * 255 / W, yy * 255 / H, (xx + yy) * 127 / (W + H)], -1)
    buf = io.BytesIO()
    Image.fromarray(np.clip(base + rng.randint(-20, 20, (H, W, 3)), 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def unet_out(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x, d, c = (torch.randn(2, 4, 8, 12, generator=g), torch.randn(2, 1, 8, 12, generator=g),
               torch.randn(2, 77, 128, generator=g))  # fmt: skip
    return model.apply_model(x, torch.tensor([10, 700]), {"c_concat": [d], "c_crossattn": [c]})


def bf16_plan() -> PrecisionPlan:
    return precision.plan_for(CPU, cpu_bf16="on")


def _manager(tmp_path, *ckpts, plan=None, keep: int = 2, optimize: bool = True) -> ModelManager:
    registry = CheckpointRegistry([c.path.parent for c in ckpts], HashCache(None))
    registry.refresh()
    on_loaded = (lambda m: optimizations.apply(m, Settings())) if optimize else None
    return ModelManager(registry, device=CPU, dtype=torch.float32, keep_in_memory=keep, precision=plan,
                        on_loaded=on_loaded)  # fmt: skip


def _generate(mm: ModelManager, tmp_path, sampler: str = "Euler a") -> np.ndarray:
    request = GenerationRequest(prompt="a house", negative_prompt="blur", init_images=[png()], width=W,
                                height=H, steps=4, seed=7, denoising_strength=0.75, sampler_name=sampler,
                                save_images=False)  # fmt: skip
    ctx = ProcessingContext(mm, Settings(), tmp_path, hooks=Hooks(), control=JobControl())
    return process(request, ctx).images[0]


# --- the decision ----------------------------------------------------------------------------------------


def test_probe_is_short_and_gives_figures():
    result = precision.measure(reps=2)
    # ~0.4 s on a quiet 2-core machine; its budget is in CPU time, so a busy shared CPU stretches the wall time
    assert result.seconds < 10.0
    assert result.matmul_fp32_ms > 0 and result.matmul_bf16_ms > 0
    assert "matmul fp32" in result.summary() and isinstance(result.fast, bool)


@pytest.mark.parametrize("result, unet", [(FAST, torch.bfloat16), (SLOW, torch.float32)])
def test_the_probes_decision_is_honoured_and_logged(result, unet, monkeypatch, caplog):
    monkeypatch.delenv(precision.ENV_VAR, raising=False)
    with caplog.at_level(logging.INFO, logger="modules.models.precision"):
        plan = precision.plan_for(CPU, measure_fn=lambda: result)
    assert plan.unet == unet and plan.probe is result
    assert plan.depth == torch.float32 and plan.vae == plan.text_encoder == unet
    assert "probe" in plan.reason and "matmul fp32" in caplog.text and plan.label in caplog.text
    assert plan.label == ("bf16" if unet == torch.bfloat16 else "fp32")


def test_a_conv_that_does_not_pay_keeps_float32():
    assert not ProbeResult(10.0, 2.0, 20.0, 18.0, 0.05, 2).fast  # matmul 5x, conv 1.1x


@pytest.mark.parametrize("forced, unet", [("on", torch.bfloat16), ("off", torch.float32)])
def test_the_probe_is_overridable_by_argument_and_environment(forced, unet, monkeypatch):
    never = lambda: pytest.fail("the probe ran although the choice was forced")  # noqa: E731
    assert precision.plan_for(CPU, cpu_bf16=forced, measure_fn=never).unet == unet
    monkeypatch.setenv(precision.ENV_VAR, forced)
    plan = precision.plan_for(CPU, measure_fn=never)
    assert plan.unet == unet and precision.ENV_VAR in plan.reason


def test_precision_full_and_no_half_keep_float32_without_probing(monkeypatch):
    monkeypatch.setenv(precision.ENV_VAR, "on")  # full wins over a forced bf16
    never = lambda: pytest.fail("probed")  # noqa: E731
    for plan in (precision.plan_for(CPU, "full", measure_fn=never), precision.plan_for(CPU, no_half=True)):
        assert plan == PrecisionPlan.uniform(torch.float32, plan.reason) and plan.label == "fp32"


def test_a_bad_environment_value_is_an_error(monkeypatch):
    monkeypatch.setenv(precision.ENV_VAR, "maybe")
    with pytest.raises(ValueError, match=precision.ENV_VAR):
        precision.plan_for(CPU)


def test_labels():
    f32, f16, b16 = torch.float32, torch.float16, torch.bfloat16
    assert precision.label_of(f32, f32, f32) == "fp32" and precision.label_of(f16, f16, f16) == "fp16"
    assert precision.label_of(b16, f32, f32) == "bf16 UNet"
    assert precision.label_of(b16, b16, f32) == "bf16 UNet+text encoder"


# --- the weights -----------------------------------------------------------------------------------------


def test_bf16_plan_gives_bf16_unet_text_vae_and_float32_midas(depth_ckpt):
    model = load_model(depth_ckpt.path, precision=bf16_plan())
    for part in (model.unet, model.text_encoder, model.vae):
        assert all(p.dtype == torch.bfloat16 for p in part.parameters())
    assert all(p.dtype == torch.float32 for p in model.depth_model.parameters())
    assert model.precision_label == "bf16" and model.dtype == torch.bfloat16
    ctx = model.get_learned_conditioning(["a house"])
    assert ctx.dtype == torch.float32  # the bf16 text encoder hands over float32


def test_a_part_switched_back_to_float32_stays_float32(depth_ckpt, monkeypatch):
    monkeypatch.setattr(precision, "VAE_BF16", False)
    monkeypatch.setattr(precision, "TEXT_ENCODER_BF16", False)
    model = load_model(depth_ckpt.path, precision=bf16_plan())
    assert model.precision_label == "bf16 UNet" and not model.vae_channels_last
    assert all(p.dtype == torch.float32 for part in (model.vae, model.text_encoder) for p in part.parameters())


def test_the_bf16_vae_runs_channels_last_is_close_to_float32_and_falls_back_on_nan(depth_ckpt):
    ref, model = load_model(depth_ckpt.path), load_model(depth_ckpt.path, precision=bf16_plan())
    conv = next(m for m in model.vae.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert model.vae_channels_last and conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for a, b in ((ref.encode_first_stage(x).mean, model.encode_first_stage(x).mean),
                 (ref.decode_first_stage(torch.ones(1, 4, 8, 8)), model.decode_first_stage(torch.ones(1, 4, 8, 8)))):
        assert b.dtype == torch.bfloat16 and float((b.float() - a).norm() / a.norm()) < 0.03
    optimizations.apply(model, Settings().override({"opt_channels_last": True}))
    optimizations.apply(model, Settings())  # channels-last off again: the bf16 VAE keeps its format
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    model.revert_vae_to_float32()  # what a NaN in the VAE does (auto_vae_precision)
    assert not model.vae_channels_last and conv.weight.dtype == torch.float32 and conv.weight.is_contiguous()
    a, b = ref.encode_first_stage(x).mean, model.encode_first_stage(x).mean
    assert b.dtype == torch.float32 and float((b - a).norm() / a.norm()) < 0.03  # float32 on bf16-rounded weights


def test_bf16_weights_are_made_once_and_survive_switches_back_and_forth(depth_ckpt, sd2_ckpt, tmp_path, monkeypatch):
    loads = []
    real = checkpoints.load_model
    monkeypatch.setattr(checkpoints, "load_model", lambda *a, **kw: loads.append(a[0]) or real(*a, **kw))
    mm = _manager(tmp_path, depth_ckpt, sd2_ckpt, plan=bf16_plan(), keep=2)
    first = mm.load("tiny-depth").model
    weight = first.unet.conv_in.weight
    ptr = weight.data_ptr()
    assert weight.dtype == torch.bfloat16 and mm.precision_label == "bf16"
    other = mm.load("tiny-sd2").model
    assert other.precision_label == "bf16" and other.dtype == torch.bfloat16
    again = mm.load("tiny-depth").model
    mm.load("tiny-sd2")
    back = mm.load("tiny-depth").model
    assert again is first and back is first and len(loads) == 2  # loaded (and converted) once each
    assert first.unet.conv_in.weight is weight and weight.data_ptr() == ptr and weight.dtype == torch.bfloat16
    assert mm.precision_info()["label"] == "bf16" and mm.precision_info()["unet"] == "bf16"


def test_a_reload_after_eviction_keeps_the_choice(depth_ckpt, sd2_ckpt, tmp_path):
    mm = _manager(tmp_path, depth_ckpt, sd2_ckpt, plan=bf16_plan(), keep=1)
    mm.load("tiny-depth")
    mm.load("tiny-sd2")
    assert mm.load("tiny-depth").model.precision_label == "bf16"


def test_winograd_and_prepack_skip_bf16_unet_convs_but_keep_a_float32_vae(depth_ckpt, monkeypatch):
    from modules.models.optimizations import PackedConv, WinogradConv

    monkeypatch.setattr(WinogradConv, "MIN_CHANNELS", 1)  # the tiny model's convolutions qualify
    monkeypatch.setattr(precision, "VAE_BF16", False)
    model = load_model(depth_ckpt.path, precision=bf16_plan())
    plain = unet_out(model)
    applied = optimizations.apply(model, Settings().override({"opt_prepack_conv": True}))
    assert applied["winograd_conv"] and applied["prepack_conv"]
    unet_convs = [m for m in model.unet.modules() if isinstance(m, torch.nn.Conv2d)]
    vae_convs = [m for m in model.vae.modules() if isinstance(m, torch.nn.Conv2d)]
    assert not any(isinstance(c.__dict__.get("forward"), (PackedConv, WinogradConv)) for c in unet_convs)
    assert any(isinstance(c.__dict__.get("forward"), WinogradConv) for c in vae_convs)
    assert torch.equal(unet_out(model), plain)  # the bf16 UNet's own path, unchanged


# --- the numbers -----------------------------------------------------------------------------------------


def test_precision_full_is_bit_identical_to_todays_path(depth_ckpt, tmp_path):
    today = _manager(tmp_path, depth_ckpt, plan=None, keep=1)
    full = _manager(tmp_path, depth_ckpt, plan=precision.plan_for(CPU, "full"), keep=1)
    a, b = today.load("tiny-depth").model, full.load("tiny-depth").model
    assert b.precision_label == a.precision_label == "fp32"
    assert all(torch.equal(p, q) and p.dtype == q.dtype for p, q in zip(a.unet.parameters(), b.unet.parameters()))
    assert torch.equal(unet_out(a), unet_out(b))
    assert np.array_equal(_generate(today, tmp_path), _generate(full, tmp_path))


def test_apply_model_keeps_the_sampler_in_float32_and_bf16_is_close(depth_ckpt, sdpa_inputs):
    ref_model = load_model(depth_ckpt.path)
    model = load_model(depth_ckpt.path, precision=bf16_plan())
    ref = unet_out(ref_model)
    sdpa_inputs.clear()
    out = unet_out(model)
    assert out.dtype == torch.float32 and set(sdpa_inputs) == {torch.bfloat16}  # computed in bf16, handed back f32
    rel = float((out - ref).norm() / ref.norm())
    assert rel < 0.03, f"relative error {rel:.4f}"  # bfloat16 has 8 mantissa bits (~0.4 % per rounding)


def test_bf16_images_are_close_to_float32(depth_ckpt, tmp_path):
    f32 = _generate(_manager(tmp_path, depth_ckpt, plan=precision.plan_for(CPU, "full"), keep=1), tmp_path)
    b16 = _generate(_manager(tmp_path, depth_ckpt, plan=bf16_plan(), keep=1), tmp_path)
    diff = np.abs(f32.astype(int) - b16.astype(int))
    assert b16.shape == f32.shape and diff.mean() < 4, f"mean pixel difference {diff.mean():.2f}"


@pytest.fixture()
def sdpa_inputs(monkeypatch) -> list[torch.dtype]:
    import torch.nn.functional as F

    seen, real = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, *a, **kw: seen.append(q.dtype) or real(q, *a, **kw))
    return seen


def test_released_file_pages_read_back_unchanged(tmp_path):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.randn(256, 1024), "b": torch.randn(300)}, str(path))
    from modules.models import safe_load

    sd = safe_load.read_state_dict(path, mmap=True)
    before = {k: v.clone() for k, v in sd.items()}
    float(sd["a"].sum())  # paged in
    freed = precision.release_file_pages([sd["a"]], path)
    assert freed > 0 and freed <= sd["a"].nbytes  # whole pages inside the tensor only
    assert all(torch.equal(sd[k], before[k]) for k in sd)  # read back from the file
    assert precision.release_file_pages([before["a"]], path) == 0  # anonymous memory is never released


# --- what the user sees: infotext and /sdapi/v1/cmd-flags ---------------------------------------------


def test_the_infotext_records_bf16_and_float32_infotext_is_unchanged(depth_ckpt, tmp_path):
    def infotext(plan) -> str:
        mm = _manager(tmp_path, depth_ckpt, plan=plan, keep=1)
        request = GenerationRequest(prompt="a house", init_images=[png()], width=W, height=H, steps=2, seed=7,
                                    save_images=False)  # fmt: skip
        return process(request, ProcessingContext(mm, Settings(), tmp_path, hooks=Hooks())).infotexts[0]

    assert "Precision: bf16" in infotext(bf16_plan())
    assert "Precision" not in infotext(precision.plan_for(CPU, "full"))


def test_the_command_line_flag_reaches_the_model_and_cmd_flags(depth_ckpt, tmp_path, monkeypatch):
    import httpx

    from tests.helpers.server import populate, running_server

    monkeypatch.setenv("SD_CPU_BF16", "off")  # the flag must win over the environment
    populate(tmp_path, depth_ckpt)
    with running_server(tmp_path, "--nowebui", "--cpu-bf16", "on") as srv:
        srv.app.service.select_checkpoint("tiny-depth")
        flags = httpx.get(srv.url + "/sdapi/v1/cmd-flags").json()
        assert flags["cpu_bf16"] == "on" and flags["precision_in_use"] == "bf16"
        assert srv.app.service.precision_info()["label"] == "bf16"


def test_a_bf16_unet_is_cast_as_it_is_read_and_equals_the_float32_weights_rounded(depth_ckpt):
    from modules.models import safe_load

    cast = checkpoints._cast_on_read(bf16_plan())
    sd = safe_load.read_state_dict(depth_ckpt.path, cast=cast)
    full = safe_load.read_state_dict(depth_ckpt.path)
    prefixes = ("model.diffusion_model.", "cond_stage_model.", "first_stage_model.")  # UNet, text encoder, VAE
    cast_keys = [k for k in full if k.startswith(prefixes)]
    assert {k.split(".")[0] for k in cast_keys} == {"model", "cond_stage_model", "first_stage_model"}
    assert all(sd[k].dtype == torch.bfloat16 for k in cast_keys if full[k].is_floating_point())
    assert all(torch.equal(sd[k], full[k].to(sd[k].dtype)) for k in cast_keys)
    rest = [k for k in full if k not in cast_keys]
    assert rest and all(sd[k].dtype == full[k].dtype for k in rest)  # MiDaS as in the file
    assert checkpoints._cast_on_read(precision.plan_for(CPU, "full")) is None
