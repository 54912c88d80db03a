"""Load and faults (issue 8): concurrent clients, a model switch and an interrupt mid-job, /progress,
atomic writes under SIGKILL, a full or unwritable outputs folder, auth on every route, loopback binding.

The real app serves tiny checkpoints on a loopback port (``tests/server.py``); the launcher test starts
``launch.py`` itself.  Every figure the closing note quotes is asserted here.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from starlette.routing import Mount

from modules.core import fileio
from modules.core.settings import Settings
from modules.frontends.ui import make_handlers
from tests.frontends.test_ui import base_values
from tests.helpers.imaging import b64, pixels, png
from tests.helpers.server import free_port, populate, running_server

pytestmark = pytest.mark.usefixtures("depth_model_current")  # tests start on the tiny depth model

ROOT = Path(__file__).resolve().parents[2]
W, H = 64, 64


def picture(w: int = W, h: int = H, seed: int = 0) -> np.ndarray:
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    return np.clip(base + rng.randint(-30, 30, (h, w, 3)), 0, 255).astype(np.uint8)


def job(**kw) -> dict:
    out = {"init_images": [b64(png(picture()))], "width": W, "height": H, "steps": 4, "seed": 1,
           "denoising_strength": 0.5, "prompt": "a house", "sampler_name": "Euler"}  # fmt: skip
    out.update(kw)
    return out


class Background(threading.Thread):
    """Run `fn` on a thread; keeps its result (or exception) and when it finished."""

    def __init__(self, fn, *args: Any):
        super().__init__(daemon=True)
        self.fn, self.args = fn, args
        self.result: Any = None
        self.error: BaseException | None = None
        self.done_at: float | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args)
        except BaseException as e:  # handed to the test, which re-raises it
            self.error = e
        finally:
            self.done_at = time.monotonic()

    def get(self, timeout: float = 120) -> Any:
        self.join(timeout)
        assert not self.is_alive(), "timed out"
        if self.error:
            raise self.error
        return self.result


def wait_for(predicate, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# --- the server ------------------------------------------------------------------------------------


class ProgressWatch(threading.Thread):
    """Polls /progress until stopped and checks every answer is consistent (and, per job, never goes back)."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.stop_event = threading.Event()
        self.polls = 0
        self.active = 0
        self.problems: list[str] = []
        self.start()

    def run(self) -> None:
        last: dict[str, float] = {}
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self.stop_event.is_set():
                r = c.get("/sdapi/v1/progress", params={"skip_current_image": "true"})
                self.polls += 1
                if r.status_code != 200:
                    self.problems.append(f"status {r.status_code}")
                    continue
                p = r.json()
                s = p["state"]
                checks = {
                    "progress in 0..1": 0.0 <= p["progress"] <= 1.0,
                    "eta >= 0": p["eta_relative"] >= 0,
                    "job_no <= job_count": 0 <= s["job_no"] <= max(s["job_count"], 0) or s["job_count"] == 0,
                    "step <= steps": 0 <= s["sampling_step"] <= s["sampling_steps"] or s["sampling_steps"] == 0,
                    "idle means 0": bool(s["job"]) or p["progress"] == 0.0,
                    "never backwards": p["progress"] >= last.get(s["job"], 0.0) - 1e-9,
                }
                self.problems += [f"{name}: {p}" for name, ok in checks.items() if not ok]
                if s["job"]:
                    self.active += 1
                    last[s["job"]] = p["progress"]

    def finish(self) -> None:
        self.stop_event.set()
        self.join(30)


def ui_generate(handlers, values: dict) -> np.ndarray:
    """Press Generate on the img2img tab (the UI's own handler), return the first image it shows."""
    *_, final = list(handlers.generate("img2img", values))
    gallery = final[0]
    assert gallery, f"the UI showed no image: {final[2]}"
    first = gallery[0][0] if isinstance(gallery[0], tuple | list) else gallery[0]
    return np.asarray(Image.open(first).convert("RGB"))


# --- concurrency ----------------------------------------------------------------------------------


def test_8_clients_x_3_requests_and_the_ui_get_their_own_images(server, client, tmp_path):
    """24 API requests from 8 threads and one UI generation at once: each image equals the same request alone."""
    requests_ = {
        (k, j): job(seed=500 + 10 * k + j, prompt=f"client {k} request {j}") for k in range(8) for j in range(3)
    }
    alone = {key: pixels(client.post("/img2img", json=req).json()["images"][0]) for key, req in requests_.items()}
    handlers = make_handlers(server.app.service, tmp_path / "ui")
    init = tmp_path / "ui-init.png"
    init.write_bytes(png(picture(seed=9)))
    ui_values = base_values(init_image=str(init), width=W, height=H, steps=4.0, seed=4242.0)
    ui_alone = ui_generate(handlers, ui_values)

    def client_thread(k: int) -> dict:
        out = {}
        with httpx.Client(base_url=server.url + "/sdapi/v1", timeout=120) as c:
            for j in range(3):
                r = c.post("/img2img", json=requests_[(k, j)])
                assert r.status_code == 200, r.text
                info = json.loads(r.json()["info"])
                assert (info["seed"], info["prompt"]) == (500 + 10 * k + j, f"client {k} request {j}")
                out[(k, j)] = pixels(r.json()["images"][0])
        return out

    watch = ProgressWatch(server.url)
    threads = [Background(client_thread, k) for k in range(8)]
    ui_thread = Background(ui_generate, handlers, ui_values)
    results: dict = {}
    for t in threads:
        results.update(t.get())
    ui_concurrent = ui_thread.get()
    watch.finish()
    assert len(results) == 24
    for key, image in results.items():
        assert np.array_equal(image, alone[key]), f"request {key} differs when run with the others"
    assert len({im.tobytes() for im in results.values()}) == 24
    assert np.array_equal(ui_concurrent, ui_alone)
    assert watch.polls > 20 and watch.active > 0 and not watch.problems, watch.problems[:3]
    assert client.get("/progress").json()["state"]["job"] == ""


# --- a model switch and an interrupt in the middle of a job -----------------------------------------


def _hashes(client, titles) -> dict[str, str]:
    """Each checkpoint's short hash, from its file (a title lacks it until the checkpoint's first load)."""
    import hashlib

    files = {m["model_name"]: m["filename"] for m in client.get("/sd-models").json()}
    return {name: hashlib.sha256(Path(files[name]).read_bytes()).hexdigest()[:10] for name in titles}


def test_model_switch_mid_job_waits_for_the_job(server, client, titles):
    hashes = _hashes(client, titles)
    long = job(steps=40, denoising_strength=1.0, n_iter=4, seed=5)
    with (
        httpx.Client(base_url=server.url + "/sdapi/v1", timeout=120) as c1,
        httpx.Client(base_url=server.url + "/sdapi/v1", timeout=120) as c2,
        httpx.Client(base_url=server.url + "/sdapi/v1", timeout=120) as c3,
    ):
        generation = Background(lambda: c1.post("/img2img", json=long))
        wait_for(lambda: client.get("/progress").json()["state"]["sampling_step"] > 0, what="the job to start")
        switch = Background(lambda: c2.post("/options", json={"sd_model_checkpoint": titles["tiny-sd2"],
                                                               "eta_ddim": 0.25}))  # fmt: skip
        wait_for(lambda: server.app.service.worker.pending > 0, what="the switch to queue behind the job")
        other = c3.post("/options", json={"samples_format": "jpg"})  # no switch: applied at once
        assert other.status_code == 200
        assert generation.is_alive() and switch.is_alive(), "the switch did not wait for the job"
        assert client.get("/options").json()["sd_model_checkpoint"] == titles["tiny-depth"]
        result = generation.get()
        switched = switch.get()
    assert result.status_code == 200 and switched.status_code == 200, switched.text
    assert switch.done_at >= generation.done_at
    info = json.loads(result.json()["info"])
    assert info["sd_model_hash"] == hashes["tiny-depth"] and len(info["infotexts"]) == 4
    assert all(f"Model hash: {hashes['tiny-depth']}" in text for text in info["infotexts"])
    options = client.get("/options").json()
    assert options["sd_model_checkpoint"] == f"tiny-sd2.safetensors [{hashes['tiny-sd2']}]"  # hashed by its load
    assert (options["eta_ddim"], options["samples_format"]) == (0.25, "jpg"), "a concurrent settings change was lost"
    after = json.loads(client.post("/img2img", json=job()).json()["info"])
    assert after["sd_model_hash"] == hashes["tiny-sd2"]
    assert client.post("/options", json={"sd_model_checkpoint": titles["tiny-depth"], "eta_ddim": 0.0,
                                         "samples_format": "png"}).status_code == 200  # fmt: skip


def test_interrupt_mid_job_leaves_the_server_healthy(server, client):
    long = job(steps=40, denoising_strength=1.0, n_iter=8, seed=6)
    queued_request = job(seed=77)
    expected = pixels(client.post("/img2img", json=queued_request).json()["images"][0])
    watch = ProgressWatch(server.url)
    with (
        httpx.Client(base_url=server.url + "/sdapi/v1", timeout=120) as c1,
        httpx.Client(base_url=server.url + "/sdapi/v1", timeout=120) as c2,
    ):
        generation = Background(lambda: c1.post("/img2img", json=long))
        wait_for(lambda: client.get("/progress").json()["state"]["sampling_step"] > 0, what="the job to start")
        queued = Background(lambda: c2.post("/img2img", json=queued_request))
        wait_for(lambda: server.app.service.worker.pending > 0, what="the second job to queue")
        assert client.post("/interrupt").json() == {}
        interrupted, after = generation.get(), queued.get()
    watch.finish()
    info = json.loads(interrupted.json()["info"])
    assert interrupted.status_code == 200 and info["interrupted"] is True and len(info["infotexts"]) < 8
    assert after.status_code == 200 and json.loads(after.json()["info"])["interrupted"] is False
    assert np.array_equal(pixels(after.json()["images"][0]), expected)  # the queued job was not touched
    idle = client.get("/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job"] == "" and idle["current_image"] is None
    assert client.post("/interrupt").json() == {} and client.post("/skip").json() == {}  # idle: nothing to stop
    again = client.post("/img2img", json=queued_request)
    assert json.loads(again.json()["info"])["interrupted"] is False
    assert np.array_equal(pixels(again.json()["images"][0]), expected)
    assert not watch.problems, watch.problems[:3]


# --- a short soak (benchmarks/soak.py runs the long one and prints the figures) ----------------------


def _rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_short_soak_with_model_switches_frees_what_it_switches_away_from(server, client, titles):
    """30 generations, a switch every 3: the models switched away from are freed and memory levels off."""
    service = server.app.service
    models, rss = [], {}
    order = [titles["tiny-depth"], titles["tiny-sd2"]]
    for i in range(30):
        if i % 3 == 0:
            assert client.post("/options", json={"sd_model_checkpoint": order[(i // 3) % 2]}).status_code == 200
            models.append(weakref.ref(service.models.current.model))
        r = client.post("/img2img", json=job(seed=900 + i, prompt=f"soak {i}", init_images=[b64(png(picture(seed=i)))],
                                             save_images=i % 2 == 0))  # fmt: skip
        assert r.status_code == 200 and len(r.json()["images"]) == 1
        if i in (9, 29):
            gc.collect()
            rss[i] = _rss_mib()
    gc.collect()
    alive = [ref for ref in models if ref() is not None]
    assert len(models) == 10 and len(alive) == 1 and alive[0]() is service.models.current.model
    assert rss[29] - rss[9] < 64, rss  # the full 200-generation run (benchmarks/soak.py) is flat within 1 MiB


# --- nothing lost: atomic writes under SIGKILL -----------------------------------------------------

WRITER = r"""
import hashlib, itertools, json, os, struct, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
target = Path(sys.argv[2])
kind = sys.argv[3]
from modules.core.fileio import atomic_write_bytes
from modules.core.settings import Settings
block = os.urandom(1 << 20)
if kind == "png":
    import numpy as np
    from modules.core import images
    noise = np.random.RandomState(0).randint(0, 255, (768, 768, 3)).astype(np.uint8)
print("ready", flush=True)
for i in itertools.count():
    if kind == "blob":
        body = struct.pack("<Q", i) + block * (8 + i % 8)
        atomic_write_bytes(target / "blob.bin", hashlib.sha256(body).digest() + body)
    elif kind == "settings":
        names = [f"extension-{i}-{k}-" + "x" * 200 for k in range(1000)]  # ~0.2 MB: within the settings' bounds
        Settings(disabled_extensions=names).save(target / "config.json")
    else:
        images.save_image(noise, target / "outputs", seed=i, prompt="p", infotext="x" * 1000, subdir_pattern=None)
"""


def _check_after_kill(folder: Path, kind: str) -> None:
    """Whatever has a final name is complete: the old file or the new one, never a truncated one."""
    if kind == "blob" and (folder / "blob.bin").exists():
        data = (folder / "blob.bin").read_bytes()
        assert hashlib.sha256(data[32:]).digest() == data[:32], "blob.bin is truncated"
    if kind == "settings" and (folder / "config.json").exists():
        saved = json.loads((folder / "config.json").read_text())
        assert len(saved["disabled_extensions"]) == 1000
        assert len(Settings.load(folder / "config.json").disabled_extensions) == 1000
    for path in (folder / "outputs").glob("*.png") if kind == "png" else []:
        with Image.open(path) as img:
            img.load()
            assert img.size == (768, 768) and img.info["parameters"] == "x" * 1000


@pytest.mark.parametrize("kind, kills", [("blob", 12), ("settings", 8), ("png", 3)])
def test_a_process_killed_while_saving_leaves_old_or_new_never_truncated(tmp_path, kind, kills):
    rng = np.random.RandomState({"blob": 1, "settings": 2, "png": 3}[kind])
    mid_write, seen = 0, set()
    for _ in range(kills):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(ROOT), str(tmp_path), kind],
                                 stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert child.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.05, 0.6)))
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        temps = set(tmp_path.rglob(".*.tmp"))
        mid_write += bool(temps - seen)  # a new temporary file left behind: this kill landed mid-write
        seen |= temps
        _check_after_kill(tmp_path, kind)
        for leftover in temps:  # a killed writer can leave its temporary file: never under a final name
            assert re.fullmatch(r"\..+\.[0-9a-z_]+\.tmp", leftover.name), leftover.name
    if kind == "blob":  # big writes: some kills land inside atomic_write_bytes (settings and PNGs use it too)
        assert mid_write >= 1, "no kill landed in the middle of a write; the test proved nothing"


def test_saved_files_get_the_usual_permissions(tmp_path):
    """Outputs are readable like any file the user writes (umask), not private to the server's user."""
    path = fileio.atomic_write_bytes(tmp_path / "a.png", b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    existing = tmp_path / "b.json"
    existing.write_text("{}")
    existing.chmod(0o640)
    fileio.atomic_write_text(existing, "{}")
    assert existing.stat().st_mode & 0o777 == 0o640  # replacing a file keeps its mode


# --- a full disk and an unwritable outputs folder -------------------------------------------------


def test_full_disk_gives_a_warning_and_the_images_still_come_back(server, client, data_dir, monkeypatch):
    outputs = data_dir / "outputs"
    real_fsync = os.fsync
    failed: list[str] = []

    def full_disk(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target.startswith((str(outputs), str(data_dir / "config.json"), str(data_dir / ".config.json"))):
            failed.append(target)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    before_files = set(outputs.rglob("*")) if outputs.exists() else set()
    config_before = (data_dir / "config.json").read_text() if (data_dir / "config.json").exists() else None
    monkeypatch.setattr(os, "fsync", full_disk)
    r = client.post("/img2img", json=job(save_images=True, seed=31))
    assert r.status_code == 200 and len(r.json()["images"]) == 1
    warnings = json.loads(r.json()["info"])["warnings"]
    assert any("could not save the image" in w and "No space left on device" in w for w in warnings), warnings
    assert client.post("/options", json={"samples_format": "png"}).status_code == 200  # applied, not saved
    monkeypatch.undo()
    assert failed, "the simulated full disk was never hit"
    new_files = {p for p in set(outputs.rglob("*")) - before_files if p.is_file()}
    assert not new_files, f"half-written files were left: {new_files}"
    if config_before is not None:
        assert (data_dir / "config.json").read_text() == config_before
    assert client.post("/img2img", json=job(save_images=True, seed=32)).status_code == 200
    assert list(outputs.rglob("*-32.png"))  # with space again, it saves


def test_unwritable_outputs_folder_gives_a_warning_and_the_images(client, data_dir):
    (data_dir / "blocked").write_text("a file where a folder should be")
    r = client.post("/img2img", json=job(save_images=True, override_settings={"outdir_img2img_samples": "blocked/x"}))
    assert r.status_code == 200 and len(r.json()["images"]) == 1
    warnings = json.loads(r.json()["info"])["warnings"]
    assert any("could not save the image to" in w and "blocked" in w for w in warnings), warnings


# --- auth on every route ---------------------------------------------------------------------------


def all_routes(app) -> list[tuple[str, str, str]]:
    """(path, method, owner) of every route the app serves: its own, the API router's, the mounted UI's."""
    out: list[tuple[str, str, str]] = []

    def walk(routes, prefix: str, owner: str) -> None:
        for r in routes:
            if isinstance(r, Mount):
                walk(r.routes, prefix + r.path, "ui")
            elif hasattr(r, "original_router"):  # FastAPI's included router
                walk(r.original_router.routes, prefix + r.include_context.prefix, owner)
            elif getattr(r, "path", None) is not None:
                for method in sorted(getattr(r, "methods", None) or {"GET"}):
                    out.append((prefix + r.path, method, owner))

    walk(app.routes, "", "app")
    return out


def concrete(path: str) -> str:
    """A request path for a route path, with made-up values for its parameters."""
    path = path.replace("{path_or_url:path}", "/etc/hostname").replace("{url_path:path}", "http://example.com/x")
    return re.sub(r"\{([^}:]+)(:[^}]+)?\}", lambda m: "1" if m.group(1) in ("size", "component_id") else "x", path)


# Gradio routes that answer without a log-in by design, and why that is harmless here.
OPEN_BY_DESIGN = {
    "/": "the page shell; without a log-in it carries the log-in form, not the UI (checked below)",
    "/login": "the log-in form posts here",
    "/login/": "the log-in form posts here",
    "/logout": "logging out",
    "/theme.css": "styles of the log-in page",
    "/gradio_api/theme.css": "styles of the log-in page",
    "/robots.txt": "static",
    "/manifest.json": "static",
    "/favicon.ico": "static",
    "/pwa_icon": "static",
    "/pwa_icon/1": "static",
    "/assets/x": "static files of the front end",
    "/static/x": "static files of the front end",
    "/svelte/x": "static files of the front end",
    "/gradio_api/startup-events": "starts the queue; no data in or out",
    "/gradio_api/app_id": "an opaque id of the app",
    "/gradio_api/app_id/": "an opaque id of the app",
    "/gradio_api/custom_component/x/x/x/x": "front-end files of custom components (there are none)",
    "/gradio_api/user": "answers null without a log-in",
    "/gradio_api/user/": "answers null without a log-in",
    "/gradio_api/login_check": "answers 401 without a log-in",
    "/gradio_api/token": "answers the caller's own cookie (none)",
    "/gradio_api/token/": "answers the caller's own cookie (none)",
    "/gradio_api/heartbeat/x": "keeps a session alive; no data in or out",
    "/gradio_api/cancel": "cancels by an unguessable session and event id",
    "/gradio_api/reset": "a no-op in Gradio 6",
    "/gradio_api/reset/": "a no-op in Gradio 6",
    "/gradio_api/stream/x": "needs an unguessable event id",
    "/gradio_api/stream/x/close": "needs an unguessable event id",
    "/gradio_api/stream/x/x/1/playlist.m3u8": "needs an unguessable session id",
    "/gradio_api/stream/x/x/1/x.x": "needs an unguessable session id",
    "/gradio_api/stream/x/x/1/playlist-file": "needs an unguessable session id",
    "/monitoring/x": "refused (403) unless monitoring is on, then needs its key",
    "/gradio_api/vibe-edit": "refused unless Gradio's vibe mode is on",
    "/gradio_api/vibe-edit/": "refused unless Gradio's vibe mode is on",
    "/gradio_api/undo-vibe-edit": "refused unless Gradio's vibe mode is on",
    "/gradio_api/undo-vibe-edit/": "refused unless Gradio's vibe mode is on",
    "/gradio_api/vibe-code": "refused unless Gradio's vibe mode is on",
    "/gradio_api/vibe-code/": "refused unless Gradio's vibe mode is on",
    "/gradio_api/vibe-starter-queries": "refused unless Gradio's vibe mode is on",
    "/gradio_api/vibe-starter-queries/": "refused unless Gradio's vibe mode is on",
}


def _anonymous_answers(url: str, routes) -> dict[tuple[str, str], int]:
    answers = {}
    with httpx.Client(base_url=url, timeout=30) as anon:
        for path, method, _owner in routes:
            if method == "HEAD":
                continue
            target = concrete(path)
            kw: dict = {"json": {}} if method in ("POST", "PUT") else {}
            if target.startswith("/gradio_api/heartbeat") or target.endswith("/queue/data"):
                with anon.stream(method, target, params={"session_hash": "x"}) as r:
                    answers[(target, method)] = r.status_code
                continue
            answers[(target, method)] = anon.request(method, target, **kw).status_code
    return answers


def test_with_auth_every_route_refuses_anonymous_requests(tmp_path, depth_ckpt):
    populate(tmp_path, depth_ckpt)
    with running_server(tmp_path, "--api", "--api-auth", "ann:s3cret") as srv:  # the UI takes the same log-in
        routes = all_routes(srv.app.fastapi)
        owners = {owner for *_, owner in routes}
        assert owners == {"app", "ui"} and len(routes) > 80
        assert ("/prompt-prefix/preview", "GET", "app") in routes  # an extension's route is there too
        answers = _anonymous_answers(srv.url, routes)
        open_routes = {k: v for k, v in answers.items() if v not in (401, 403, 404, 405)}
        unexpected = {k: v for k, v in open_routes.items() if k[0] not in OPEN_BY_DESIGN}
        assert not unexpected, unexpected
        must_refuse = [("GET", "/sdapi/v1/options"), ("POST", "/sdapi/v1/txt2img"), ("POST", "/sdapi/v1/interrupt"),
                       ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/prompt-prefix/preview"),
                       ("GET", "/config"), ("GET", "/gradio_api/info"), ("GET", "/gradio_api/openapi.json"),
                       ("POST", "/gradio_api/queue/join"), ("POST", "/gradio_api/upload"),
                       ("GET", "/gradio_api/file=/etc/hostname"), ("GET", "/gradio_api/file/etc/hostname"),
                       ("POST", "/gradio_api/run/predict"), ("POST", "/gradio_api/call/predict"),
                       ("GET", "/gradio_api/upload_progress")]  # fmt: skip
        with httpx.Client(base_url=srv.url, timeout=30) as anon:
            for method, path in must_refuse:
                r = anon.request(method, path, **({"json": {}} if method == "POST" else {}))
                assert r.status_code == 401, (method, path, r.status_code)
            with anon.stream("GET", "/gradio_api/queue/data", params={"session_hash": "x"}) as r:
                assert r.status_code == 401
            page = anon.get("/", headers={"accept-encoding": "br, gzip"})
            assert page.status_code == 200 and "auth_required" in page.text  # the log-in form only:
            assert "Denoising strength" not in page.text and "tiny-depth" not in page.text  # no UI, no model names
        basic = ("ann", "s3cret")
        with httpx.Client(base_url=srv.url, timeout=60) as user:
            assert user.get("/sdapi/v1/options", auth=basic).status_code == 200
            assert user.get("/prompt-prefix/preview", params={"prompt": "p"}, auth=basic).json() == {"prompt": "p"}
            assert user.post("/login", data={"username": "ann", "password": "s3cret"}).status_code == 200
            assert user.get("/config").status_code == 200 and "Denoising strength" in user.get("/").text
            assert user.get("/gradio_api/info").status_code == 200
            assert user.get("/sdapi/v1/options").status_code == 401  # the UI's cookie is not the API's log-in
        assert httpx.get(srv.url + "/sdapi/v1/options", auth=("ann", "wrong")).status_code == 401


def test_either_auth_flag_protects_both_the_ui_and_the_api(tmp_path, depth_ckpt):
    populate(tmp_path, depth_ckpt)
    with running_server(tmp_path, "--api", "--gradio-auth", "bea:pw") as srv:
        assert httpx.get(srv.url + "/sdapi/v1/options").status_code == 401
        assert httpx.get(srv.url + "/sdapi/v1/options", auth=("bea", "pw")).status_code == 200
        assert httpx.get(srv.url + "/config").status_code == 401
    with running_server(tmp_path, "--nowebui", "--api-auth", "cy:pw") as srv:
        for path in ("/sdapi/v1/progress", "/docs", "/openapi.json", "/prompt-prefix/preview", "/anything"):
            assert httpx.get(srv.url + path).status_code == 401, path
        assert httpx.get(srv.url + "/prompt-prefix/preview", auth=("cy", "pw")).status_code == 200


# --- loopback only unless --listen ---------------------------------------------------------------


def _listening(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on `port`, from /proc/net/tcp (IPv4, hex little-endian)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def _outside_address() -> str | None:
    """This machine's address on a non-loopback interface, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_launcher_binds_loopback_unless_listen(tmp_path):
    populate(tmp_path)
    launched = {}
    for name, extra in (("default", []), ("listen", ["--listen"])):
        port = free_port()
        cmd = [sys.executable, str(ROOT / "launch.py"), "--skip-install", "--nowebui", "--data-dir", str(tmp_path),
               "--port", str(port), "--log-level", "WARNING", *extra]  # fmt: skip
        launched[name] = (port, subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    try:
        for _name, (port, proc) in launched.items():
            wait_for(lambda p=port, pr=proc: _listening(p) or pr.poll() is not None, timeout=120, what="the launcher")
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        default_port, listen_port = launched["default"][0], launched["listen"][0]
        assert _listening(default_port) == {"127.0.0.1"}
        assert _listening(listen_port) == {"0.0.0.0"}
        assert httpx.get(f"http://127.0.0.1:{default_port}/sdapi/v1/progress", timeout=10).status_code == 200
        outside = _outside_address()
        if outside is not None:
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://{outside}:{default_port}/sdapi/v1/progress", timeout=5)
            assert httpx.get(f"http://{outside}:{listen_port}/sdapi/v1/progress", timeout=10).status_code == 200
    finally:
        for _port, proc in launched.values():
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
