"""LoRA / LyCORIS networks: key mapping, the formulas, merging with exact restore, safety, refusals."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from modules.core.errors import UnsafeCheckpointError, UnsupportedModelError
from modules.models import ldm_config as model_config
from modules.models import ldm_to_diffusers as convert
from modules.models import safe_load
from modules.models.checkpoints import load_model, resolve_config
from modules.models.networks import NetworkRegistry, NetworkStack, lora_hashes
from modules.models.networks.keys import module_names
from modules.models.networks.swap import ParamBackup
from modules.models.optimizations import WinogradConv
from modules.models.sd_model import build_model
from tests.helpers.ldm_layout import model_layout
from tests.helpers.network_files import (
    kohya_file,
    lora_targets,
    lora_tensors,
    mapping_pages,
    randn,
    te_trained_path,
    write_fsynced_checkpoint,
    write_malicious,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_fsynced_checkpoint(tmp_path_factory.mktemp("networks-ckpt"), "tiny-depth", seed=1)


@pytest.fixture()
def model(ckpt):
    """A fresh model per test (0.3 s): a failed test cannot leave merged weights for the next."""
    return load_model(ckpt.path)


@pytest.fixture()
def lora_dir(tmp_path) -> Path:
    d = tmp_path / "Lora"
    d.mkdir()
    return d


def stack_for(folder: Path) -> NetworkStack:
    registry = NetworkRegistry([folder])
    registry.refresh()
    return NetworkStack(registry)


def weights(model) -> dict[str, torch.Tensor]:
    params = {f"unet.{n}": p for n, p in model.unet.named_parameters()}
    params.update({f"text_encoder.{n}": p for n, p in model.text_encoder.named_parameters()})
    return {n: p.detach().clone() for n, p in params.items()}


def lora_delta(w: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """up @ down as the reference: flattened matrices, reshaped to the weight (Tucker: mid contracted in)."""
    up, down = w["lora_up.weight"].flatten(1), w["lora_down.weight"].flatten(1)
    if "lora_mid.weight" in w:
        inner = torch.einsum("nmkl,mj->njkl", w["lora_mid.weight"], down)
        return torch.einsum("in,njkl->ijkl", up, inner).reshape(shape)
    return (up @ down).reshape(shape)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def close_outputs(a: torch.Tensor, b: torch.Tensor) -> None:
    """Model outputs: float rounding of the weights (scale applied before or after the product) carries through."""
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# --- kohya LoRA / LoCon -----------------------------------------------------------------------------


def test_kohya_lora_is_merged_into_every_targeted_weight(model, lora_dir):
    gen = torch.Generator().manual_seed(0)
    targets = lora_targets(model)
    file_sd = kohya_file(targets, lambda m: lora_tensors(m, 4, gen), alpha=2.0)
    save_file(file_sd, str(lora_dir / "style.safetensors"))
    before = weights(model)
    applied = stack_for(lora_dir).apply(model, [("style", 0.7, 0.4)])
    assert applied[0].modules == len(targets)
    for t in targets:
        w = {k.split(".", 1)[1]: v for k, v in file_sd.items() if k.startswith(t.kohya + ".")}
        m = 0.7 if t.component == "text_encoder" else 0.4
        original = before[f"{t.component}.{t.path}.weight"]
        close(t.module.weight, original + m * 2.0 / 4 * lora_delta(w, original.shape))
    untouched = [n for n, p in model.unet.named_parameters() if "resnets" in n]
    assert untouched and all(
        torch.equal(before[f"unet.{n}"], dict(model.unet.named_parameters())[n]) for n in untouched
    )


def test_locon_convolutions_and_tucker_mid(model, lora_dir):
    gen = torch.Generator().manual_seed(1)
    targets = lora_targets(model, conv=True, text=False)
    convs = [t for t in targets if t.module.weight.dim() == 4 and t.module.weight.shape[2] == 3]
    assert convs
    file_sd = kohya_file(targets, lambda m: lora_tensors(m, 3, gen, tucker=True), alpha=1.5)
    assert any(k.endswith("lora_mid.weight") for k in file_sd)
    save_file(file_sd, str(lora_dir / "locon.safetensors"))
    before = weights(model)
    stack_for(lora_dir).apply(model, [("locon", 1.0, 0.8)])
    for t in targets:
        w = {k.split(".", 1)[1]: v for k, v in file_sd.items() if k.startswith(t.kohya + ".")}
        original = before[f"unet.{t.path}.weight"]
        close(t.module.weight, original + 0.8 * 1.5 / 3 * lora_delta(w, original.shape))


def test_conv_in_change_for_four_channels_leaves_the_depth_channel(model, lora_dir):
    gen = torch.Generator().manual_seed(2)
    conv_in = model.unet.conv_in
    assert conv_in.weight.shape[1] == 5
    down, up = randn((2, 4, 3, 3), gen), randn((conv_in.out_channels, 2, 1, 1), gen)
    save_file({"lora_unet_conv_in.lora_down.weight": down, "lora_unet_conv_in.lora_up.weight": up},
              str(lora_dir / "sd2base.safetensors"))  # fmt: skip
    original = conv_in.weight.detach().clone()
    stack_for(lora_dir).apply(model, [("sd2base", 1.0, 1.0)])
    close(conv_in.weight[:, :4], original[:, :4] + (up.flatten(1) @ down.flatten(1)).reshape(-1, 4, 3, 3))
    assert torch.equal(conv_in.weight[:, 4], original[:, 4])


# --- LyCORIS: LoHa, LoKr, full diff -----------------------------------------------------------------


def test_loha_with_and_without_tucker(model, lora_dir):
    gen = torch.Generator().manual_seed(3)
    linear = model.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    conv = model.unet.down_blocks[0].resnets[0].conv1
    out_l, in_l = linear.weight.shape
    out_c, in_c = conv.weight.shape[:2]
    r = 3
    lin = {f"hada_w{i}_{ab}": randn(s, gen) for i in (1, 2) for ab, s in (("a", (out_l, r)), ("b", (r, in_l)))}
    tuck = {f"hada_w{i}_{ab}": randn((r, n), gen) for i in (1, 2) for ab, n in (("a", out_c), ("b", in_c))}
    tuck.update({f"hada_t{i}": randn((r, r, 3, 3), gen) for i in (1, 2)})
    sd = {f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.{k}": v for k, v in lin.items()}
    sd.update({f"lora_unet_down_blocks_0_resnets_0_conv1.{k}": v for k, v in tuck.items()})
    sd["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha"] = torch.tensor(1.0)
    sd["lora_unet_down_blocks_0_resnets_0_conv1.alpha"] = torch.tensor(6.0)
    save_file(sd, str(lora_dir / "loha.safetensors"))
    w_lin, w_conv = linear.weight.detach().clone(), conv.weight.detach().clone()
    stack_for(lora_dir).apply(model, [("loha", 1.0, 0.5)])
    expected_lin = (lin["hada_w1_a"] @ lin["hada_w1_b"]) * (lin["hada_w2_a"] @ lin["hada_w2_b"]) * (1.0 / r)
    close(linear.weight, w_lin + 0.5 * expected_lin)

    def cp(t, a, b):  # out[o, i, k, l] = sum_pq a[p, o] t[p, q, k, l] b[q, i]
        return torch.einsum("po,pqkl,qi->oikl", a, t, b)

    expected_conv = cp(tuck["hada_t1"], tuck["hada_w1_a"], tuck["hada_w1_b"]) * cp(
        tuck["hada_t2"], tuck["hada_w2_a"], tuck["hada_w2_b"]
    )
    close(conv.weight, w_conv + 0.5 * (6.0 / r) * expected_conv)


def test_lokr_scale_only_with_a_low_rank_factor(model, lora_dir):
    gen = torch.Generator().manual_seed(4)
    blocks = model.unet.down_blocks[1].attentions[0].transformer_blocks[0]
    low, whole, conv = blocks.attn1.to_k, blocks.attn1.to_v, model.unet.down_blocks[1].resnets[0].conv2
    (o, i), (oc, ic) = low.weight.shape, conv.weight.shape[:2]
    low_rank = {"lokr_w1": randn((4, 8), gen), "lokr_w2_a": randn((o // 4, 2), gen),
                "lokr_w2_b": randn((2, i // 8), gen), "alpha": torch.tensor(1.0)}  # fmt: skip
    full = {"lokr_w1_a": randn((8, 1), gen), "lokr_w1_b": randn((1, 4), gen), "lokr_w2": randn((o // 8, i // 4), gen)}
    full_alpha = {**full, "alpha": torch.tensor(4.0)}  # w1 is low-rank here: alpha / w1_b rank applies
    tucker = {"lokr_w1": randn((2, 2), gen), "lokr_w2_a": randn((2, oc // 2), gen), "lokr_w2_b": randn((2, ic // 2), gen),
              "lokr_t2": randn((2, 2, 3, 3), gen)}  # fmt: skip
    prefix = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_"
    sd = {f"{prefix}to_k.{k}": v for k, v in low_rank.items()}
    sd.update({f"{prefix}to_v.{k}": v for k, v in full_alpha.items()})
    sd.update({f"lora_unet_down_blocks_1_resnets_0_conv2.{k}": v for k, v in tucker.items()})
    save_file(sd, str(lora_dir / "lokr.safetensors"))
    before = {n: m.weight.detach().clone() for n, m in (("k", low), ("v", whole), ("c", conv))}
    stack_for(lora_dir).apply(model, [("lokr", 1.0, 1.0)])
    close(low.weight, before["k"] + torch.kron(low_rank["lokr_w1"], low_rank["lokr_w2_a"] @ low_rank["lokr_w2_b"]) / 2)
    close(whole.weight, before["v"] + torch.kron(full["lokr_w1_a"] @ full["lokr_w1_b"], full["lokr_w2"]) * 4.0)
    w2 = torch.einsum("po,pqkl,qi->oikl", tucker["lokr_w2_a"], tucker["lokr_t2"], tucker["lokr_w2_b"]).contiguous()
    close(conv.weight, before["c"] + torch.kron(tucker["lokr_w1"][:, :, None, None], w2))  # no alpha: scale 1


def test_full_diff_changes_weight_and_bias(model, lora_dir):
    gen = torch.Generator().manual_seed(5)
    proj = model.unet.mid_block.attentions[0].proj_out
    diff, diff_b = randn(tuple(proj.weight.shape), gen), randn(tuple(proj.bias.shape), gen)
    save_file({"lora_unet_mid_block_attentions_0_proj_out.diff": diff,
               "lora_unet_mid_block_attentions_0_proj_out.diff_b": diff_b}, str(lora_dir / "full.safetensors"))  # fmt: skip
    w, b = proj.weight.detach().clone(), proj.bias.detach().clone()
    stack = stack_for(lora_dir)
    stack.apply(model, [("full", 1.0, 0.25)])
    close(proj.weight, w + 0.25 * diff)
    close(proj.bias, b + 0.25 * diff_b)
    stack.restore(model)
    assert torch.equal(proj.weight, w) and torch.equal(proj.bias, b)


# --- other file layouts -------------------------------------------------------------------------------


def old_diffusers_path(component: str, path: str) -> str:
    """diffusers' attention-processor LoRA names (before PEFT): attn1.processor.to_q_lora, self_attn.to_q_lora."""
    path = re.sub(r"\.(attn[12])\.(to_q|to_k|to_v)$", r".\1.processor.\2_lora", path)
    path = re.sub(r"\.(attn[12])\.to_out\.0$", r".\1.processor.to_out_lora", path)
    path = re.sub(r"\.self_attn\.(q|k|v|out)_proj$", r".self_attn.to_\1_lora", path)
    return f"{component}.{path}" + ("" if path.endswith("_lora") else ".lora")


def test_peft_and_older_diffusers_files_merge_as_the_kohya_file(model, ckpt, lora_dir):
    gen = torch.Generator().manual_seed(6)
    targets = lora_targets(model)
    per_target = {t.kohya: lora_tensors(t.module, 4, gen) for t in targets}
    kohya = {f"{t.kohya}.{r}": v for t in targets for r, v in per_target[t.kohya].items()}
    kohya_alpha = {**kohya, **{f"{t.kohya}.alpha": torch.tensor(2.0) for t in targets}}
    peft, old = {}, {}
    for t in targets:
        w = per_target[t.kohya]
        path = t.path if t.component == "unet" else te_trained_path(model.text_encoder, t.path)
        peft[f"{t.component}.{path}.lora_A.weight"] = w["lora_down.weight"]
        peft[f"{t.component}.{path}.lora_B.weight"] = w["lora_up.weight"]
        old[f"{old_diffusers_path(t.component, path)}.down.weight"] = w["lora_down.weight"]
        old[f"{old_diffusers_path(t.component, path)}.up.weight"] = w["lora_up.weight"]
    assert any(".processor.to_out_lora.up." in k for k in old) and any("self_attn.to_q_lora" in k for k in old)
    adapter = json.dumps({"unet.lora_alpha": 2.0, "unet.r": 4, "text_encoder.lora_alpha": 2.0, "text_encoder.r": 4})
    save_file(kohya, str(lora_dir / "kohya.safetensors"))
    save_file(kohya_alpha, str(lora_dir / "kohya_alpha.safetensors"))
    save_file(peft, str(lora_dir / "peft.safetensors"), metadata={"lora_adapter_metadata": adapter})
    save_file(old, str(lora_dir / "old.safetensors"))
    stack = stack_for(lora_dir)
    results = {}
    for name in ("kohya", "kohya_alpha", "peft", "old"):
        applied = stack.apply(model, [(name, 0.9, 0.6)])
        assert applied[0].modules == len(targets), name
        results[name] = weights(model)
    for name, same_as in (("peft", "kohya_alpha"), ("old", "kohya")):
        assert all(torch.equal(results[same_as][k], results[name][k]) for k in results[name]), name
    assert any(not torch.equal(results["kohya"][k], results["kohya_alpha"][k]) for k in results["kohya"])


def ldm_transformer_modules(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """The LDM UNet modules sd-scripts' LoRA targets, named as the LDM checkpoint names them."""
    pattern = re.compile(
        r"model\.diffusion_model\.((?:input_blocks\.\d+|middle_block|output_blocks\.\d+)\.1\."
        r"(?:proj_in|proj_out|transformer_blocks\.0\.(?:attn[12]\.(?:to_[qkv]|to_out\.0)|ff\.net\.(?:0\.proj|2))))\.weight$"
    )
    return [m.group(1) for k in state_dict if (m := pattern.match(k))]


def bake_text_lora(baked: dict, path: str, delta: torch.Tensor) -> None:
    """Add a text-encoder change (HF module path) into the open_clip keys of an LDM state dict."""
    layer, rest = re.match(r"encoder\.layers\.(\d+)\.(.+)$", path).groups()
    p = f"cond_stage_model.model.transformer.resblocks.{layer}."
    qkv = {"self_attn.q_proj": 0, "self_attn.k_proj": 1, "self_attn.v_proj": 2}
    if rest in qkv:
        width = delta.shape[1]
        baked[p + "attn.in_proj_weight"][qkv[rest] * width : (qkv[rest] + 1) * width] += delta
    else:
        name = {"self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}[rest]
        baked[p + name + ".weight"] += delta


def test_ldm_named_lora_equals_a_checkpoint_with_the_change_baked_in(model, ckpt, lora_dir, tmp_path):
    """UNet LoRA in LDM names (input_blocks_1_1_proj_in ...), text LoRA in kohya names: the merged model's
    outputs equal those of a checkpoint whose LDM tensors had the change added by hand."""
    gen = torch.Generator().manual_seed(7)
    baked = {k: v.clone() for k, v in ckpt.state_dict.items()}
    file_sd, modules = {}, 0
    for ldm in ldm_transformer_modules(ckpt.state_dict):
        modules += 1
        weight = baked[f"model.diffusion_model.{ldm}.weight"]
        w = {"lora_down.weight": randn((4, weight.shape[1]), gen), "lora_up.weight": randn((weight.shape[0], 4), gen)}
        file_sd.update({f"lora_unet_{ldm.replace('.', '_')}.{r}": v for r, v in w.items()})
        file_sd[f"lora_unet_{ldm.replace('.', '_')}.alpha"] = torch.tensor(1.0)
        weight += 0.5 * (1.0 / 4) * lora_delta(w, weight.shape)
    for t in lora_targets(model, text=True):
        if t.component == "text_encoder":
            modules += 1
            w = lora_tensors(t.module, 2, gen)
            file_sd.update({f"{t.kohya}.{r}": v for r, v in w.items()})
            bake_text_lora(baked, t.path, 0.8 * lora_delta(w, t.module.weight.shape))
    save_file(file_sd, str(lora_dir / "ldm_names.safetensors"))
    baked_path = tmp_path / "baked.safetensors"
    save_file({k: v.contiguous() for k, v in baked.items()}, str(baked_path))
    shutil.copy(ckpt.config_path, baked_path.with_suffix(".yaml"))
    reference = load_model(baked_path)
    applied = stack_for(lora_dir).apply(model, [("ldm_names", 0.8, 0.5)])
    assert applied[0].modules == modules
    torch.manual_seed(0)
    x, ctx = torch.randn(1, 5, 16, 16), torch.randn(1, 77, 128)
    close_outputs(model.unet(x, torch.tensor([500]), encoder_hidden_states=ctx).sample,
                  reference.unet(x, torch.tensor([500]), encoder_hidden_states=ctx).sample)  # fmt: skip
    close_outputs(model.get_learned_conditioning(["a red dog"]), reference.get_learned_conditioning(["a red dog"]))


def test_full_size_names_cover_every_ldm_and_kohya_module():
    """On the real 512-depth-ema layout (meta tensors): every LDM UNet module and every SD2 kohya name maps."""
    keys_json = ROOT.parent / "shared" / "ref" / "keys.json"
    cfg_path = ROOT / "configs" / "v2-midas-inference.yaml"
    if keys_json.is_file():
        layout = {k: tuple(v[0]) for k, v in json.loads(keys_json.read_text())["state_dict"].items()}
    else:
        layout = model_layout(yaml.safe_load(cfg_path.read_text()), text={"width": 1024, "layers": 24, "embed": 1024})
    sd = {k: torch.empty(s, device="meta") for k, s in layout.items()}
    config = model_config.load_config(cfg_path)
    plan = convert.plan_keys(config, sd)
    unet = convert.build_unet(config, sd)
    text = convert.build_text_encoder(config, sd, plan.components["text_encoder"])
    fake = SimpleNamespace(unet=unet, text_encoder=text, report=SimpleNamespace(plan=plan))
    names = module_names(fake)
    ldm_modules = {k[len("model.diffusion_model.") :].rsplit(".", 1)[0] for k in plan.components["unet"]}
    assert all(names.by_name.get("lora_unet_" + m.replace(".", "_")) for m in ldm_modules)
    assert names.by_name["lora_unet_input_blocks_1_1_proj_in"] == ("unet", "down_blocks.0.attentions.0.proj_in")
    assert names.by_name["lora_unet_output_blocks_2_1_conv"] == ("unet", "up_blocks.0.upsamplers.0.conv")
    for layer in range(23):
        for part in ("self_attn_q_proj", "self_attn_out_proj", "mlp_fc1", "mlp_fc2"):
            assert f"lora_te_text_model_encoder_layers_{layer}_{part}" in names.by_name
    assert "lora_te_text_model_encoder_layers_23_mlp_fc1" not in names.by_name  # penultimate layer model


# --- apply / restore ----------------------------------------------------------------------------------


def write_simple_lora(model, folder: Path, name: str, seed: int, rank: int = 4) -> None:
    gen = torch.Generator().manual_seed(seed)
    file_sd = kohya_file(lora_targets(model, conv=True), lambda m: lora_tensors(m, rank, gen), alpha=rank / 2)
    save_file(file_sd, str(folder / f"{name}.safetensors"))


def test_restore_is_bit_exact_and_the_same_set_twice_does_no_work(model, ckpt, lora_dir):
    write_simple_lora(model, lora_dir, "a", 10)
    write_simple_lora(model, lora_dir, "b", 11)
    stack = stack_for(lora_dir)
    before = weights(model)
    originals = {n: p.data_ptr() for n, p in model.unet.named_parameters()}
    stack.apply(model, [("a", 1.0, 1.0), ("b", 0.5, -0.5)])
    assert stack.last_stats["merged"] > 0
    tensors = [p.data_ptr() for p in model.unet.parameters()]
    stack.apply(model, [("a", 1.0, 1.0), ("b", 0.5, -0.5)])
    assert stack.last_stats["merged"] == 0 and stack.last_stats["restored"] == 0
    assert tensors == [p.data_ptr() for p in model.unet.parameters()]
    stack.apply(model, [("b", 0.5, -0.5)])  # another set: restore, then merge only b
    only_b = weights(model)
    stack.restore(model)
    after = weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {n: p.data_ptr() for n, p in model.unet.named_parameters()} == originals  # the file's tensors themselves
    fresh = load_model(ckpt.path)
    stack.apply(fresh, [("b", 0.5, -0.5)])
    assert all(torch.equal(only_b[k], v) for k, v in weights(fresh).items())
    stack.apply(fresh, [("a", 1.0, 1.0), ("b", 0.5, -0.5)])
    stack.apply(model, [("a", 1.0, 1.0), ("b", 0.5, -0.5)])
    ours = weights(model)
    assert all(torch.equal(ours[k], v) for k, v in weights(fresh).items())
    assert stack.applied_key(fresh).count(":") == 4 and stack.applied_key(load_model(ckpt.path)) == ""


def test_two_networks_add_up(model, lora_dir):
    write_simple_lora(model, lora_dir, "a", 20)
    write_simple_lora(model, lora_dir, "b", 21)
    stack = stack_for(lora_dir)
    before = weights(model)
    deltas = {}
    for name in ("a", "b"):
        stack.apply(model, [(name, 1.0, 1.0)])
        deltas[name] = {k: v - before[k] for k, v in weights(model).items()}
    stack.apply(model, [("a", 1.0, 1.0), ("b", 1.0, 1.0)])
    for k, v in weights(model).items():
        close(v, before[k] + deltas["a"][k] + deltas["b"][k])


def mapped_model(path: Path):
    """A model whose weights are views of the memory-mapped file (``safe_load``'s ``mmap=True``)."""
    sd = safe_load.read_state_dict(path, mmap=True)
    config, _ = resolve_config(path, sd, None)
    return build_model(config, sd)


def test_merging_never_writes_into_a_memory_mapped_checkpoint(ckpt, lora_dir):
    model = mapped_model(ckpt.path)
    write_simple_lora(model, lora_dir, "a", 30)
    stack = stack_for(lora_dir)
    x = torch.randn(1, 5, 16, 16)
    model.unet(x, torch.tensor([10]), encoder_hidden_states=torch.randn(1, 77, 128))  # every page read once
    pages = mapping_pages(ckpt.path)
    assert pages.get("Rss", 0) > 0 and pages.get("Private_Dirty", 0) == 0, pages
    stack.apply(model, [("a", 1.0, 1.0)])
    model.unet(x, torch.tensor([10]), encoder_hidden_states=torch.randn(1, 77, 128))
    stack.restore(model)
    assert mapping_pages(ckpt.path).get("Private_Dirty", 0) == 0
    with torch.no_grad():  # the check can see a write: an in-place one dirties the mapping
        model.unet.conv_in.weight.mul_(1.0)
    assert mapping_pages(ckpt.path).get("Private_Dirty", 0) > 0


def test_a_failing_request_leaves_the_model_as_it_was(model, lora_dir):
    write_simple_lora(model, lora_dir, "a", 40)
    stack = stack_for(lora_dir)
    stack.apply(model, [("a", 1.0, 1.0)])
    merged = weights(model)
    with pytest.raises(Exception, match="not found"):
        stack.apply(model, [("a", 1.0, 1.0), ("missing", 1.0, 1.0)])
    assert all(torch.equal(merged[k], v) for k, v in weights(model).items())
    assert [a.name for a in stack.applied(model)] == ["a"]


def test_swapped_conv_weight_drops_winograd_transform():
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).requires_grad_(False)
    conv.forward = WinogradConv(conv)
    x = torch.randn(1, 64, 16, 16)
    conv(x), conv(x)
    assert conv.forward.u is not None
    backup = ParamBackup()
    new = torch.randn_like(conv.weight)
    backup.replace(conv, conv.weight, new)
    assert conv.forward.u is None
    torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x, new, conv.bias, padding=1), atol=1e-4, rtol=1e-4)


# --- refusals and warnings ---------------------------------------------------------------------------


@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_pickle_lora_is_refused_without_running_code(model, lora_dir, tmp_path, zip_format):
    marker = tmp_path / "pwned"
    payload = {"lora_unet_conv_in.lora_down.weight": torch.zeros(1, 5, 3, 3)}
    write_malicious(lora_dir / "evil.pt", marker, payload, zip_format=zip_format)
    with pytest.raises(UnsafeCheckpointError, match="Refused"):
        stack_for(lora_dir).apply(model, [("evil", 1.0, 1.0)])
    assert not marker.exists()


def test_sd1_lora_is_refused_with_what_it_is_for(model, lora_dir):
    gen = torch.Generator().manual_seed(8)
    sd = {}
    for layer in range(2):
        for proj in ("q_proj", "k_proj", "v_proj"):
            n = f"lora_te_text_model_encoder_layers_{layer}_self_attn_{proj}"
            sd.update({f"{n}.lora_down.weight": randn((4, 768), gen), f"{n}.lora_up.weight": randn((768, 4), gen)})
    n = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    sd.update({f"{n}.lora_down.weight": randn((4, 768), gen), f"{n}.lora_up.weight": randn((320, 4), gen)})
    save_file(sd, str(lora_dir / "sd15_style.safetensors"))
    with pytest.raises(
        UnsupportedModelError, match=r"sd15_style.safetensors is a LoRA for SD1\.x .*768 wide.*sd2-depth"
    ):
        stack_for(lora_dir).apply(model, [("sd15_style", 1.0, 1.0)])


def test_sdxl_loras_are_refused(model, lora_dir):
    gen = torch.Generator().manual_seed(9)
    te1 = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    save_file({f"{te1}.lora_down.weight": randn((4, 768), gen), f"{te1}.lora_up.weight": randn((768, 4), gen)},
              str(lora_dir / "xl_te.safetensors"))  # fmt: skip
    unet_only = {}
    for proj in ("to_k", "to_v"):
        n = f"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_{proj}"
        unet_only.update({f"{n}.lora_down.weight": randn((4, 2048), gen), f"{n}.lora_up.weight": randn((640, 4), gen)})
    save_file(unet_only, str(lora_dir / "xl_unet.safetensors"))
    stack = stack_for(lora_dir)
    with pytest.raises(UnsupportedModelError, match="xl_te.safetensors is a LoRA for SDXL"):
        stack.apply(model, [("xl_te", 1.0, 1.0)])
    with pytest.raises(UnsupportedModelError, match="xl_unet.safetensors is a LoRA for SDXL .*2048 wide"):
        stack.apply(model, [("xl_unet", 1.0, 1.0)])


def test_unknown_and_unsupported_keys_are_listed_in_a_warning(model, lora_dir, caplog):
    gen = torch.Generator().manual_seed(12)
    q = model.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    sd = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": randn((2, 32), gen),
          "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": randn((32, 2), gen),
          "lora_unet_not_a_module.lora_down.weight": torch.zeros(2, 2),
          "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 64),
          "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.zeros(64, 2),
          "lora_unet_mid_block_attentions_0_proj_in.dora_scale": torch.ones(64, 1)}  # fmt: skip
    save_file(sd, str(lora_dir / "odd.safetensors"))
    before = q.weight.detach().clone()
    proj_in = model.unet.mid_block.attentions[0].proj_in.weight.detach().clone()
    with caplog.at_level(logging.WARNING):
        applied = stack_for(lora_dir).apply(model, [("odd", 1.0, 1.0)])
    assert applied[0].modules == 1 and not torch.equal(q.weight, before)
    assert torch.equal(model.unet.mid_block.attentions[0].proj_in.weight, proj_in)
    assert "lora_unet_not_a_module.lora_down.weight" in caplog.text and "DoRA" in caplog.text


# --- files: listing and hashes ------------------------------------------------------------------------


def test_listing_and_hashes_are_a1111s(model, lora_dir):
    sub = lora_dir / "styles"
    sub.mkdir()
    write_simple_lora(model, sub, "ink", 50)
    data = (sub / "ink.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    addnet = hashlib.sha256(data[8 + n :]).hexdigest()
    tensors = load_file(str(sub / "ink.safetensors"))
    save_file(tensors, str(lora_dir / "ink_named.safetensors"), metadata={"ss_output_name": "Ink Style", "ss_v2": "True",
                                                                          "ss_tag_frequency": '{"a": {"b": 1}}'})  # fmt: skip
    torch.save({"lora_unet_conv_in.diff": torch.zeros(32, 5, 3, 3)}, lora_dir / "plain.pt")
    registry = NetworkRegistry([lora_dir])
    registry.refresh()
    listing = {e["name"]: e for e in registry.api_list()}
    assert set(listing) == {"ink", "ink_named", "plain"}
    assert listing["ink_named"]["alias"] == "Ink Style" and listing["ink"]["alias"] == "ink"
    assert listing["ink_named"]["metadata"]["ss_tag_frequency"] == {"a": {"b": 1}}
    assert set(listing["ink"]) == {"name", "alias", "path", "metadata"}
    ink, named, plain = (registry.get(x) for x in ("ink", "Ink Style", "plain"))
    assert ink.shorthash == addnet[:12] and named.shorthash == ink.shorthash  # metadata does not change it
    assert plain.sha256 == hashlib.sha256((lora_dir / "plain.pt").read_bytes()).hexdigest()
    applied = NetworkStack(registry).apply(model, [("Ink Style", 1.0, 1.0), ("plain", 0.0, 1.0)])
    assert lora_hashes(applied) == f"Ink Style: {addnet[:12]}, plain: {plain.shorthash}"
    assert math.isclose(applied[1].unet_multiplier, 1.0)


def test_file_digests_see_a_rewrite_with_the_same_size_and_mtime(tmp_path):
    """LoRA/VAE/embedding caches key on the whole FileStamp (ctime too), as checkpoints' hash cache does."""
    import os

    from modules.models.model_files import FileDigests, sha256_file

    path = tmp_path / "x.safetensors"
    path.write_bytes(b"a" * 64)
    digests = FileDigests()
    first = digests.get(path)
    st = path.stat()
    path.write_bytes(b"b" * 64)  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime written back: only the ctime differs
    assert digests.get(path) == sha256_file(path) != first
