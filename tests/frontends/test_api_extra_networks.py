"""Issue 17 through the HTTP API: the A1111 listings with real content, the refresh routes, styles and
tiling honoured, sd_vae as an option and an override, bad tags and names refused with 4xx."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from modules.core import infotext
from modules.models.checkpoints import load_model
from tests.helpers.ldm_layout import write_checkpoint
from tests.helpers.network_files import kohya_file, lora_targets, lora_tensors, write_malicious
from tests.helpers.server import populate, running_server


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, sd2_ckpt):
    d = tmp_path_factory.mktemp("extra-api")
    populate(d, sd2_ckpt)
    model = load_model(sd2_ckpt.path)
    gen = torch.Generator().manual_seed(1)
    lora = d / "models" / "Lora"
    lora.mkdir(parents=True)
    sd = kohya_file(lora_targets(model), lambda m: lora_tensors(m, 2, gen), alpha=2)
    save_file(sd, str(lora / "clay.safetensors"), metadata={"ss_output_name": "clay_v1",
              "ss_tag_frequency": json.dumps({"1_clay": {"clay": 9, "figure": 4}})})  # fmt: skip
    Image.new("RGB", (40, 30), (200, 40, 40)).save(lora / "clay.preview.png")
    extra = d / "more-loras"
    extra.mkdir()
    save_file(sd, str(extra / "ink.safetensors"))
    (d / "embeddings").mkdir()
    ids = model.tokenizer.encode("red house")
    vectors = model.text_encoder.get_input_embeddings().weight[ids].detach().clone()
    torch.save({"string_to_param": {"*": vectors}, "step": 5}, d / "embeddings" / "redhouse.pt")
    torch.save({"string_to_param": {"*": torch.zeros(2, 768)}}, d / "embeddings" / "sd1only.pt")
    vae = d / "models" / "VAE"
    vae.mkdir(parents=True)
    other = write_checkpoint(tmp_path_factory.mktemp("other"), "other", "sd2", seed=8)
    save_file({k: v.contiguous() for k, v in other.state_dict.items() if k.startswith("first_stage_model.")},
              str(vae / "other.safetensors"))  # fmt: skip
    (d / "styles.csv").write_text("name,prompt,negative_prompt\nRed,a red {prompt},blurry\n", encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def server(data_dir):
    with running_server(data_dir, "--api", "--lora-dir", str(data_dir / "more-loras")) as srv:
        srv.app.service.select_checkpoint("tiny-sd2")
        yield srv


def body(**kw):
    return {"prompt": "house", "steps": 2, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler", **kw}


def png(b64: str) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(b64))).tobytes()


def test_loras_listing_refresh_and_the_lora_dir_flag(client, data_dir):
    items = {i["name"]: i for i in client.get("/loras").json()}
    assert set(items) == {"clay", "ink"}
    assert items["clay"]["alias"] == "clay_v1" and items["clay"]["metadata"]["ss_tag_frequency"]["1_clay"]["clay"] == 9
    assert items["ink"]["path"] == str((data_dir / "more-loras" / "ink.safetensors").resolve())
    (data_dir / "models" / "Lora" / "late.safetensors").write_bytes(
        (data_dir / "more-loras" / "ink.safetensors").read_bytes()
    )
    assert "late" not in {i["name"] for i in client.get("/loras").json()}
    assert client.post("/refresh-loras").status_code == 200
    assert "late" in {i["name"] for i in client.get("/loras").json()}


def test_sd_vae_embeddings_and_styles_listings(client, data_dir):
    assert client.get("/sd-vae").json() == [
        {
            "model_name": "other.safetensors",
            "filename": str((data_dir / "models" / "VAE" / "other.safetensors").resolve()),
        }
    ]
    assert client.post("/refresh-vae").status_code == 200
    emb = client.get("/embeddings").json()
    loaded = emb["loaded"]["redhouse"]
    assert (loaded["step"], loaded["vectors"], loaded["sd_checkpoint"]) == (5, 2, None) and list(emb["loaded"]) == [
        "redhouse"
    ]
    assert "sd1only" in emb["skipped"] and emb["skipped"]["sd1only"]["shape"] == 768
    assert client.post("/refresh-embeddings").status_code == 200
    assert client.get("/prompt-styles").json() == [
        {"name": "Red", "prompt": "a red {prompt}", "negative_prompt": "blurry"}
    ]


def test_styles_and_tiling_are_honoured(client):
    styled = client.post("/txt2img", json=body(styles=["Red"], tiling=True))
    assert styled.status_code == 200, styled.text
    info = json.loads(styled.json()["info"])
    assert info["all_prompts"] == ["a red house"] and info["all_negative_prompts"] == ["blurry"]
    assert not [w for w in info["warnings"] if "tiling" in w or "style" in w], info["warnings"]
    assert infotext.parse(info["infotexts"][0])["Tiling"] == "True"
    plain = client.post("/txt2img", json=body(prompt="a red house", negative_prompt="blurry", tiling=True))
    assert png(plain.json()["images"][0]) == png(styled.json()["images"][0])
    null = client.post("/txt2img", json=body(tiling=None))
    assert null.status_code == 200 and "Tiling" not in json.loads(null.json()["info"])["infotexts"][0]


def test_embedding_word_gives_the_image_of_its_words(client):
    a = client.post("/txt2img", json=body(prompt="a redhouse")).json()
    b = client.post("/txt2img", json=body(prompt="a red house")).json()
    assert png(a["images"][0]) == png(b["images"][0])
    assert "TI hashes" in json.loads(a["info"])["infotexts"][0]


def test_sd_vae_option_and_override(client):
    plain = client.post("/txt2img", json=body()).json()
    over = client.post("/txt2img", json=body(override_settings={"sd_vae": "other.safetensors"})).json()
    info = json.loads(over["info"])
    assert info["sd_vae_name"] == "other.safetensors" and len(info["sd_vae_hash"]) == 10
    assert png(over["images"][0]) != png(plain["images"][0])
    assert png(client.post("/txt2img", json=body()).json()["images"][0]) == png(plain["images"][0])  # restored
    assert client.post("/options", json={"sd_vae": "other.safetensors"}).status_code == 200
    try:
        assert png(client.post("/txt2img", json=body()).json()["images"][0]) == png(over["images"][0])
    finally:
        assert client.post("/options", json={"sd_vae": "Automatic"}).status_code == 200
    r = client.post("/txt2img", json=body(override_settings={"sd_vae": "nope.safetensors"}))
    assert r.status_code == 404 and "nope.safetensors" in r.text
    assert client.post("/options", json={"sd_vae": "nope.pt"}).status_code == 404


def test_lora_tags_through_the_api(client):
    plain = client.post("/txt2img", json=body()).json()
    tagged = client.post("/txt2img", json=body(prompt="house <lora:clay:1.5>")).json()
    info = json.loads(tagged["info"])
    assert png(tagged["images"][0]) != png(plain["images"][0])
    assert infotext.parse(info["infotexts"][0])["Lora hashes"].startswith("clay: ")
    assert info["prompt"] == "house <lora:clay:1.5>"
    assert png(client.post("/txt2img", json=body()).json()["images"][0]) == png(plain["images"][0])
    unknown = json.loads(client.post("/txt2img", json=body(prompt="house <lora:gone:1>")).json()["info"])
    assert "couldn't find Lora with name gone" in unknown["warnings"]
    bad = client.post("/txt2img", json=body(prompt="house <lora:clay:lots>"))
    assert bad.status_code == 422 and "not a multiplier" in bad.text


def test_malicious_lora_is_refused_through_the_api(client, data_dir, tmp_path):
    marker = tmp_path / "pwned"
    write_malicious(data_dir / "models" / "Lora" / "evil.pt", marker, {"lora_unet_x.alpha": torch.tensor(1.0)})
    try:
        r = client.post("/txt2img", json=body(prompt="house <lora:evil:1>"))
        assert 400 <= r.status_code < 500 and "evil" in r.text
        assert not marker.exists()
    finally:
        (data_dir / "models" / "Lora" / "evil.pt").unlink()


def test_webuiapi_sees_the_lists(server):
    webuiapi = pytest.importorskip("webuiapi")
    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
    assert [s["name"] for s in api.get_prompt_styles()] == ["Red"]
    assert "clay" in [lora["name"] for lora in api.get_loras()]
    assert httpx.get(server.url + "/sdapi/v1/sd-vae").json()[0]["model_name"] == "other.safetensors"
