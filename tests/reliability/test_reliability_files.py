"""Hostile files and names (issue 8): malicious pickles, corrupt safetensors, yaml that tries to import,
paths where names belong, and the web UI's file routes.

Every hostile file goes through the real loading code (``load_model``), the model manager, and the
real server (``POST /sdapi/v1/options``, ``override_settings``, the UI's checkpoint picker): each is
refused with a message naming the reason, its side effect (a marker file, an imported module) never
happens, and the server goes on serving with the model it had.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml
from starlette.routing import Mount

from modules.core.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    ConfigError,
    UnsafeCheckpointError,
    UnsupportedModelError,
    ValidationError,
)
from modules.frontends.ui import make_handlers
from modules.models import ldm_config as model_config
from modules.models.checkpoints import CheckpointRegistry, HashCache, load_model
from modules.models.manager import ModelManager
from tests.helpers.imaging import b64, png
from tests.helpers.server import populate

W, H = 64, 64

# --- raw pickle programs (protocol 2/3 opcodes), so payloads need no live object to pickle ---------


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _text(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _bytes(b: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(b)) + b


def _call(fn: bytes, *args: bytes) -> bytes:
    """REDUCE: push `fn`, then a tuple of `args`, then call."""
    return fn + b"(" + b"".join(args) + b"tR"


def _program(body: bytes, protocol: int = 2) -> bytes:
    return bytes([0x80, protocol]) + body + b"."


def _wrapped(call: bytes) -> bytes:
    """``{"state_dict": {}, "x": <call>}``: the shape of a real checkpoint with one extra entry."""
    return b"}(" + _text("state_dict") + b"}" + _text("x") + call + b"u"


def payloads(marker: Path) -> dict[str, bytes]:
    """Pickle programs that create `marker` when unpickled by an unrestricted unpickler."""
    touch = f"touch {marker}"
    py = f"open({str(marker)!r}, 'w').close()"
    imported_system = _call(
        _global("builtins", "getattr"), _call(_global("builtins", "__import__"), _text("os")), _text("system")
    )
    inner = _program(_wrapped(_call(_global("os", "system"), _text(touch))))
    return {
        "os-system": _program(_wrapped(_call(_global("os", "system"), _text(touch)))),
        "posix-system": _program(_wrapped(_call(_global("posix", "system"), _text(touch)))),
        "subprocess": _program(_wrapped(_call(_global("subprocess", "getoutput"), _text(touch)))),
        "eval": _program(_wrapped(_call(_global("builtins", "eval"), _text(py)))),
        "exec": _program(_wrapped(_call(_global("builtins", "exec"), _text(py)))),
        "import": _program(_wrapped(_call(imported_system, _text(touch)))),
        "nested-pickle": _program(_wrapped(_call(_global("pickle", "loads"), _bytes(inner))), protocol=3),
        "nested-_pickle": _program(_wrapped(_call(_global("_pickle", "loads"), _bytes(inner))), protocol=3),
    }


# (how it names the reason) for each payload above
REASONS = {
    "os-system": "system",
    "posix-system": "posix.system",
    "subprocess": "subprocess.getoutput",
    "eval": "eval",
    "exec": "exec",
    "import": "getattr",
    "nested-pickle": "pickle.loads",
    "nested-_pickle": "_pickle.loads",
}


def torch_zip(data_pkl: bytes | None = None, extra: dict[str, bytes] | None = None, *,
              compress: bool = False, rename_top: str | None = None) -> bytes:  # fmt: skip
    """A real ``torch.save`` archive, with its data.pkl replaced and/or members added."""
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(2)}}, buf)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            name = item.filename
            if name.endswith("/data.pkl") and data_pkl is not None:
                data = data_pkl
            if rename_top and name.endswith("/version"):
                name = f"{rename_top}/{name.split('/', 1)[1]}"
            dst.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)
        for name, data in (extra or {}).items():
            dst.writestr(name, data)
    return out.getvalue()


def picture(w: int = W, h: int = H, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 255, (h, w, 3)).astype(np.uint8)


@dataclass(frozen=True)
class Hostile:
    name: str  # file name in the models folder
    data: bytes
    error: type[Exception]
    reason: str  # a regex the message must match


def hostile_checkpoints(marker: Path) -> list[Hostile]:
    """Every kind of hostile or broken checkpoint the issue lists, with the reason it must be refused for."""
    out = []
    for kind, program in payloads(marker).items():
        reason = REASONS[kind]
        out.append(Hostile(f"zip-{kind}.ckpt", torch_zip(program), UnsafeCheckpointError, f"forbidden.*{reason}"))
        out.append(Hostile(f"legacy-{kind}.ckpt", program, UnsafeCheckpointError, f"forbidden.*{reason}"))
    good_zip = torch_zip()
    legacy = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(64)}}, legacy, _use_new_zipfile_serialization=False)
    no_tensors = _program(_wrapped(_text("just text")))
    nested = b"]" * 50_000 + b"a" * 49_999  # a list inside a list ... 50,000 deep
    out += [
        Hostile("zip-extra-member.ckpt", torch_zip(extra={"archive/payload.py": b"import os"}),
                UnsafeCheckpointError, "unexpected member 'archive/payload.py'"),
        Hostile("zip-traversal-member.ckpt", torch_zip(extra={"../../evil.sh": b"rm -rf /"}),
                UnsafeCheckpointError, "unexpected member '../../evil.sh'"),
        Hostile("zip-two-pickles.ckpt", torch_zip(extra={"other/data.pkl": payloads(marker)["os-system"]}),
                UnsafeCheckpointError, "2 data.pkl records"),
        Hostile("zip-two-folders.ckpt", torch_zip(rename_top="other"), UnsafeCheckpointError,
                "not a plain PyTorch checkpoint archive"),
        # torch.save never compresses; torch.load would inflate a compressed member into memory (a zip bomb)
        Hostile("zip-compressed.ckpt", torch_zip(compress=True), UnsafeCheckpointError, "compressed member"),
        Hostile("zip-truncated.ckpt", good_zip[: len(good_zip) // 2], CheckpointError, "truncated"),
        Hostile("legacy-truncated.ckpt", legacy.getvalue()[:-40], CheckpointError, "could not be read"),
        Hostile("empty.ckpt", b"", CheckpointError, "empty \\(0 bytes\\)"),
        Hostile("picture.ckpt", png(picture()), CheckpointError, "not a PyTorch checkpoint"),
        Hostile("text.ckpt", b"this is not a model\n" * 50, CheckpointError, "not a PyTorch checkpoint"),
        Hostile("pickled-list.ckpt", torch_zip(_program(b"](" + _text("a") + b"e")), CheckpointError,
                "does not hold a state dict"),
        Hostile("deeply-nested.ckpt", torch_zip(_program(b"}(" + _text("state_dict") + nested + b"u")),
                CheckpointError, "holds no tensors"),
        Hostile("no-tensors.ckpt", torch_zip(no_tensors), CheckpointError, "holds no tensors"),
    ]  # fmt: skip
    return out


def safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def with_header(header: object, data: bytes = b"\0" * 16) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def corrupt_safetensors() -> list[Hostile]:
    good = safetensors_bytes({"a": torch.ones(4), "b": torch.zeros(2, 2)})
    f32 = {"dtype": "F32", "shape": [4]}
    return [
        Hostile("st-length-past-end.safetensors", struct.pack("<Q", 10**12) + b"{}", CheckpointError,
                "corrupt .safetensors header"),
        Hostile("st-not-json.safetensors", struct.pack("<Q", 8) + b"{{{{{{{{" + b"\0" * 8, CheckpointError,
                "corrupt .safetensors header"),
        Hostile("st-list-header.safetensors", with_header([1, 2]), CheckpointError, "not a JSON object"),
        Hostile("st-offsets-past-end.safetensors", with_header({"a": {**f32, "data_offsets": [0, 10**9]}}),
                CheckpointError, "outside the file"),
        Hostile("st-offsets-reversed.safetensors", with_header({"a": {**f32, "data_offsets": [16, 0]}}),
                CheckpointError, "outside the file"),
        Hostile("st-offsets-negative.safetensors", with_header({"a": {**f32, "data_offsets": [-16, 0]}}),
                CheckpointError, "outside the file"),
        Hostile("st-offsets-missing.safetensors", with_header({"a": f32}), CheckpointError, "outside the file"),
        Hostile("st-bad-dtype.safetensors", with_header({"a": {"dtype": "X99", "shape": [4],
                                                                "data_offsets": [0, 16]}}),
                CheckpointError, "not a valid .safetensors file"),
        Hostile("st-shape-mismatch.safetensors", with_header({"a": {"dtype": "F32", "shape": [400],
                                                                     "data_offsets": [0, 16]}}),
                CheckpointError, "not a valid .safetensors file"),
        Hostile("st-truncated.safetensors", good[: len(good) - 8], CheckpointError, "outside the file"),
        Hostile("st-too-short.safetensors", b"1234567", CheckpointError, "too short"),
        Hostile("st-text.safetensors", b"definitely not tensors\n" * 20, CheckpointError, "corrupt"),
        Hostile("st-not-sd.safetensors", good, UnsupportedModelError, "not a Stable Diffusion checkpoint"),
    ]  # fmt: skip


# --- hostile checkpoints through the loader and the manager ----------------------------------------


@pytest.fixture(scope="module")
def marker(tmp_path_factory) -> Path:
    """The file every payload tries to create; it must never exist."""
    return tmp_path_factory.mktemp("markers") / "pwned"


def _ids(items: list[Hostile]) -> list[str]:
    return [h.name for h in items]


ALL_HOSTILE = hostile_checkpoints(Path("/nonexistent/marker")) + corrupt_safetensors()


@pytest.mark.parametrize("index", range(len(ALL_HOSTILE)), ids=_ids(ALL_HOSTILE))
def test_hostile_checkpoint_is_refused_with_its_reason(tmp_path, marker, index):
    case = (hostile_checkpoints(marker) + corrupt_safetensors())[index]
    path = tmp_path / case.name
    path.write_bytes(case.data)
    with pytest.raises(case.error) as info:
        load_model(path)
    message = str(info.value)
    assert path.name in message or "not a Stable Diffusion" in message, message
    assert __import__("re").search(case.reason, message), (case.reason, message)
    assert not marker.exists(), "a payload ran"


def test_manager_keeps_its_model_after_every_refusal(tmp_path, marker, depth_ckpt):
    folder = populate(tmp_path, depth_ckpt)
    cases = hostile_checkpoints(marker) + corrupt_safetensors()
    for case in cases:
        (folder / case.name).write_bytes(case.data)
    registry = CheckpointRegistry([folder], HashCache(tmp_path / "cache.json"))
    assert len(registry.refresh()) == len(cases) + 1  # every file is listed (and hashed) without being loaded
    manager = ModelManager(registry, device=torch.device("cpu"), dtype=torch.float32)
    good = manager.load("tiny-depth")
    for case in cases:
        with pytest.raises(case.error):
            manager.load(case.name)
        assert manager.current is good and case.name in (manager.last_error or "")
    assert not marker.exists()


# --- hostile checkpoints through the real server ---------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, depth_ckpt, sd2_ckpt, marker) -> Path:
    d = tmp_path_factory.mktemp("files-data")
    folder = populate(d, depth_ckpt, sd2_ckpt)
    for case in hostile_checkpoints(marker) + corrupt_safetensors():
        (folder / case.name).write_bytes(case.data)
    return d


def body(**kw) -> dict:
    out = {"init_images": [b64(png(picture()))], "width": W, "height": H, "steps": 2, "seed": 3}
    out.update(kw)
    return out


def _current(client) -> tuple[str, str]:
    """(title from /options, model hash a generation reports)."""
    title = client.get("/options").json()["sd_model_checkpoint"]
    r = client.post("/img2img", json=body())
    assert r.status_code == 200, r.text
    return title, json.loads(r.json()["info"])["sd_model_hash"]


def test_server_refuses_every_hostile_checkpoint_and_keeps_serving(client, server, marker):
    before = _current(client)
    assert before[0].startswith("tiny-depth")
    cases = hostile_checkpoints(marker) + corrupt_safetensors()
    for case in cases:
        r = client.post("/options", json={"sd_model_checkpoint": case.name})
        assert 400 <= r.status_code < 500, (case.name, r.status_code, r.text)
        detail = r.json()["detail"]
        assert __import__("re").search(case.reason, detail), (case.name, detail)
        r = client.post("/img2img", json=body(override_settings={"sd_model_checkpoint": case.name}))
        assert 400 <= r.status_code < 500, (case.name, r.status_code, r.text)
        assert client.get("/progress").status_code == 200
    assert _current(client) == before
    assert not marker.exists()
    handlers = make_handlers(server.app.service)
    title = next(i.title for i in server.app.service.checkpoints() if i.name == "zip-os-system.ckpt")
    *_, (_dropdown, status) = list(handlers.select_checkpoint(title))
    assert "Could not load" in status and "forbidden" in status
    assert _current(client) == before and not marker.exists()


# --- yaml configs are data ------------------------------------------------------------------------


@pytest.fixture()
def import_probe(tmp_path, monkeypatch) -> tuple[str, Path]:
    """An importable module whose import creates a marker: a yaml `target:` naming it must never import it."""
    name = f"reliability_yaml_probe_{tmp_path.name.replace('-', '_')}"
    marker = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Evil: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, marker


def test_yaml_targets_anywhere_are_never_imported(tmp_path, depth_ckpt, import_probe):
    module, imported = import_probe
    cfg = yaml.safe_load(depth_ckpt.config_path.read_text())
    target = f"{module}.Evil"
    params = cfg["model"]["params"]
    cfg["model"]["target"] = target
    for key in ("unet_config", "first_stage_config", "depth_stage_config"):
        params[key]["target"] = target
    params["scheduler_config"] = {"target": "os.system", "params": {"command": f"touch {imported}"}}
    ckpt = tmp_path / "targets.safetensors"
    ckpt.write_bytes(depth_ckpt.path.read_bytes())
    ckpt.with_suffix(".yaml").write_text(yaml.safe_dump(cfg))
    model = load_model(ckpt)  # the targets are read as data: the model is built from the weights' layout
    assert model.is_depth
    params["cond_stage_config"]["target"] = target
    ckpt.with_suffix(".yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=f"text encoder '{target}' is not supported"):
        load_model(ckpt)
    assert module not in sys.modules and not imported.exists()


@pytest.mark.parametrize(
    "text, reason",
    [
        ("model: !!python/object/apply:os.system ['touch {m}']\n", "could not determine a constructor|python"),
        ("model: !!python/object/new:subprocess.Popen [['touch', '{m}']]\n", "could not determine a constructor|python"),
        ("model: !!python/name:os.system\n", "could not determine a constructor|python"),
        ("model: !!python/module:os\n", "could not determine a constructor|python"),
        ("model:\n  params: &x\n    a: *x\n", "recursive aliases"),
        ("a0: &a0 [x,x,x,x,x,x,x,x,x,x]\n" + "".join(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]\n"
                                                    for i in range(1, 9)) + "model: {params: *a8}\n",
         "expansion exceeds|aliases"),
        ("model: " + "[" * 5_000 + "]" * 5_000 + "\n", "nested"),
        ("model: " + "[" * 200_000 + "]" * 200_000 + "\n", "nested"),  # crashed the interpreter (segfault)
        ("model: {params: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "}\n", "nested"),
        ("\xff\xfe\0 binary", "cannot read config"),
    ],
    ids=["apply", "new", "name", "module", "recursive-alias", "alias-bomb", "deep-5k", "deep-200k", "deep-map",
         "binary"],
)  # fmt: skip
def test_hostile_yaml_is_a_config_error(tmp_path, text, reason):
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.yaml"
    path.write_bytes(text.replace("{m}", str(marker)).encode("utf-8", "surrogateescape"))
    with pytest.raises(ConfigError, match=reason) as info:
        model_config.load_config(path)
    assert "hostile.yaml" in str(info.value)
    assert not marker.exists()


def test_server_survives_a_hostile_yaml_beside_a_checkpoint(client, data_dir, depth_ckpt):
    folder = data_dir / "models" / "Stable-diffusion"
    (folder / "deep-yaml.safetensors").write_bytes(depth_ckpt.path.read_bytes())
    (folder / "deep-yaml.yaml").write_text("model: " + "[" * 200_000 + "]" * 200_000 + "\n")
    assert client.post("/refresh-checkpoints").status_code == 200
    before = _current(client)
    r = client.post("/options", json={"sd_model_checkpoint": "deep-yaml"})
    assert r.status_code == 400 and "deep-yaml.yaml" in r.json()["detail"] and "nested" in r.json()["detail"]
    assert _current(client) == before


# --- names from requests are never paths ----------------------------------------------------------

PATH_NAMES = [
    "../../etc/passwd",
    "/etc/passwd",
    "..\\..\\windows\\win.ini",
    "C:\\models\\x.ckpt",
    "~/x.ckpt",
    "tiny-depth.safetensors/../../../outside.safetensors",
    "../outside.safetensors",
    "models/../../outside.safetensors",
    "tiny\0depth",
]


def test_checkpoint_names_that_are_paths_are_refused(client, server, data_dir, depth_ckpt):
    outside = data_dir.parent / "outside.safetensors"  # a valid checkpoint, but outside the model folders
    outside.write_bytes(depth_ckpt.path.read_bytes())
    absolute = str(outside)
    before = _current(client)
    for name in [*PATH_NAMES, absolute, str(data_dir / "models" / "Stable-diffusion" / "tiny-sd2.safetensors")]:
        r = client.post("/options", json={"sd_model_checkpoint": name})
        assert r.status_code in (404, 422), (name, r.text)
        assert "sd_model_checkpoint" in r.json()["detail"] or "not found" in r.json()["detail"], r.text
        r = client.post("/img2img", json=body(override_settings={"sd_model_checkpoint": name}))
        assert r.status_code in (404, 422), (name, r.text)
        r = client.post("/img2img", json=body(infotext=f"a cat\nSteps: 2, Seed: 3, Model: {name}"))
        assert r.status_code == 200, r.text
        warnings = json.loads(r.json()["info"])["warnings"]
        assert any("not in the checkpoint list" in w for w in warnings) or "\0" in name, warnings
        with pytest.raises((CheckpointNotFoundError, ValidationError)):
            server.app.service.select_checkpoint(name)
    handlers = make_handlers(server.app.service)
    *_, (_dropdown, status) = list(handlers.select_checkpoint("../../etc/passwd"))
    assert "Could not load" in status and "not found" in status
    assert _current(client) == before


@pytest.mark.parametrize("option", ["outdir_img2img_samples", "outdir_img2img_grids", "outdir_txt2img_samples",
                                    "outdir_txt2img_grids", "outdir_save"])  # fmt: skip
def test_output_folders_from_requests_stay_inside_the_data_folder(client, data_dir, option, tmp_path):
    escape = tmp_path / "escaped"
    for value in (str(escape), "../escaped", "outputs/../../escaped", "..\\escaped", "C:\\escaped", "~/escaped"):
        r = client.post("/options", json={option: value})
        assert r.status_code == 422 and option in r.json()["detail"], (value, r.text)
        r = client.post("/img2img", json=body(save_images=True, override_settings={option: value}))
        assert r.status_code == 422 and option in r.json()["detail"], (value, r.text)
    assert not escape.exists() and not (data_dir.parent / "escaped").exists()
    assert client.get("/options").json()[option] != str(escape)


def test_filename_patterns_cannot_leave_the_output_folder(client, data_dir):
    overrides = {
        "outdir_img2img_samples": "outputs/patterns",
        "samples_filename_pattern": "../../../[seed]",
        "directories_filename_pattern": "../../..",
    }
    # separators in a pattern are refused, naming the setting (issue 18: not silently turned into _)
    r = client.post("/img2img", json=body(save_images=True, seed=77, override_settings=overrides))
    assert r.status_code == 422 and "samples_filename_pattern" in r.json()["detail"], r.text
    only_dirs = {**overrides, "samples_filename_pattern": "[seed]"}
    r = client.post("/img2img", json=body(save_images=True, seed=77, override_settings=only_dirs))
    assert r.status_code == 422 and "directories_filename_pattern" in r.json()["detail"], r.text
    fine = {**overrides, "samples_filename_pattern": "[seed]-x", "directories_filename_pattern": "[date]"}
    r = client.post("/img2img", json=body(save_images=True, seed=77, override_settings=fine))
    assert r.status_code == 200, r.text
    saved = [p for p in (data_dir / "outputs" / "patterns").rglob("*.png")]
    assert saved and all(p.resolve().is_relative_to((data_dir / "outputs" / "patterns").resolve()) for p in saved)
    assert any("77" in p.name for p in saved)
    assert not list(data_dir.parent.glob("*77*.png")) and not list(data_dir.glob("*77*.png"))


# --- the UI serves files only from its own output folder -------------------------------------------


def _ui_output_folder(server) -> Path:
    """The folder the mounted Gradio app may serve files from (``allowed_paths``)."""
    for route in server.app.fastapi.routes:
        if isinstance(route, Mount) and hasattr(route.app, "get_blocks"):
            (folder,) = route.app.get_blocks().allowed_paths
            return Path(folder)
    raise AssertionError("the web UI is not mounted")


def test_ui_file_routes_serve_only_the_output_folder(server, client, data_dir, tmp_path):
    client.post("/options", json={"samples_format": "png"})  # config.json exists
    folder = _ui_output_folder(server)
    shown = folder / "reliability-shown.png"
    shown.write_bytes(png(picture()))
    secret = folder.parent / f"{folder.name}-secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    link = folder / "link-to-secret.png"
    link.unlink(missing_ok=True)
    link.symlink_to(secret)
    refused = [
        "/etc/passwd",
        str(data_dir / "config.json"),
        str(data_dir / "models" / "Stable-diffusion" / "tiny-depth.safetensors"),
        str(secret),
        f"{folder}/../{secret.name}",
        str(link),
        f"http://127.0.0.1:{server.port}/sdapi/v1/options",  # no fetching from the server's own network
        "file:///etc/passwd",
    ]
    with httpx.Client(base_url=server.url, timeout=30) as web:
        r = web.get(f"/gradio_api/file={shown}")
        assert r.status_code == 200 and r.content == shown.read_bytes()
        for path in refused:
            for route in (f"/gradio_api/file={path}", f"/gradio_api/file/{path.lstrip('/')}", f"/file={path}"):
                r = web.get(route)
                assert r.status_code in (403, 404), (route, r.status_code)
                assert b"TOP-SECRET-CONTENT" not in r.content and b"root:" not in r.content
    sdapi = [r for r in server.app.fastapi.routes if getattr(r, "path", "").startswith("/sdapi")]
    assert all("{" not in r.path for r in sdapi)  # the API takes no file names at all
