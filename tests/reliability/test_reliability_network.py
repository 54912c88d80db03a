"""The server on localhost against other sites' pages, spoofed Host headers, oversized uploads, lost
clients, password guessing and malformed calls (issue 15, the network part).

The hostile-page tests open a page served from a second loopback port in headless Chromium: that page
is another origin, exactly what a drive-by site (or one reached through DNS rebinding) is.
"""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modules.app import options as cmd_args
from modules.app.worker import Worker
from modules.frontends.auth_throttle import AuthThrottle
from modules.frontends.http_guard import BodyLimits, HostPolicy, HttpGuard, OriginPolicy, count_parts, host_name
from modules.frontends.ui.uploads import UploadFolder
from tests.helpers.imaging import b64, png
from tests.helpers.server import free_port, running_server

pytestmark = pytest.mark.usefixtures("depth_model_current")


def job(**kw) -> dict:
    rng = np.random.RandomState(0)
    out = {"init_images": [b64(png(rng.randint(0, 255, (64, 64, 3)).astype(np.uint8)))], "width": 64, "height": 64,
           "steps": 4, "seed": 1, "denoising_strength": 0.5, "prompt": "a house", "sampler_name": "Euler"}  # fmt: skip
    out.update(kw)
    return out


# --- Host allow-list -------------------------------------------------------------------------------------


def test_host_policy_names_and_addresses():
    local = HostPolicy.build(server_name=None, listen=False, allowed_hosts="render-box, Studio.lan")
    for ok in ("127.0.0.1:7860", "localhost:7860", "LOCALHOST", "[::1]:7860", "app.localhost:1", "127.5.6.7",
               "render-box:7860", "studio.lan", "studio.lan.", None, ""):  # fmt: skip
        assert local.allows(ok), ok
    for bad in ("attacker.example:7860", "127.0.0.1.nip.io", "localhost.attacker.example", "192.168.1.20:7860",
                "[fe80::1]:7860", "0x7f000001.example"):  # fmt: skip
        assert not local.allows(bad), bad
    assert host_name("[::1]:7860") == "::1" and host_name("Example.COM.:80") == "example.com"

    listening = HostPolicy.build(server_name=None, listen=True, allowed_hosts=None)
    assert listening.allows("192.168.1.20:7860") and listening.allows("[fe80::1]:7860")  # its own addresses
    assert listening.allows(socket.gethostname())
    assert not listening.allows("attacker.example")  # a name: what DNS rebinding sends
    named = HostPolicy.build(server_name="sd.example.org", listen=False, allowed_hosts=None)
    assert named.allows("sd.example.org:7860") and not named.allows("other.example.org")
    assert HostPolicy.build(server_name=None, listen=False, allowed_hosts="*").allows("anything.example")


@pytest.mark.parametrize("path", ["/sdapi/v1/options", "/sdapi/v1/sd-models", "/", "/config", "/docs",
                                  "/openapi.json", "/gradio_api/info"])  # fmt: skip
def test_spoofed_host_is_403_on_every_route(server, path):
    r = httpx.get(server.url + path, headers={"Host": f"attacker.example:{server.port}"})
    assert r.status_code == 403, (path, r.status_code)
    assert r.json()["error"] == "HostNotAllowed" and "sd_model_checkpoint" not in r.text
    assert httpx.get(server.url + path, headers={"Host": f"localhost:{server.port}"}).status_code == 200


def test_spoofed_host_cannot_change_options(server):
    before = server.app.service.settings.samples_save
    r = httpx.post(server.url + "/sdapi/v1/options", json={"samples_save": not before},
                   headers={"Host": "rebound.attacker.example"})  # fmt: skip
    assert r.status_code == 403 and server.app.service.settings.samples_save == before


# --- Origin / Sec-Fetch-Site on state-changing routes ----------------------------------------------------


@pytest.mark.parametrize("path", ["/sdapi/v1/unload-checkpoint", "/sdapi/v1/interrupt", "/sdapi/v1/reload-checkpoint",
                                  "/sdapi/v1/refresh-checkpoints", "/gradio_api/upload", "/gradio_api/queue/join"])
def test_foreign_origin_cannot_act(server, path):
    service = server.app.service
    loaded = service.current_checkpoint()
    for headers in ({"Origin": "http://127.0.0.1:1"}, {"Origin": "null"}, {"Origin": "https://attacker.example"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):  # fmt: skip
        r = httpx.post(server.url + path, headers=headers)
        assert r.status_code == 403, (path, headers, r.status_code)
        assert r.json()["error"] == "CrossSiteRequest"
    assert service.current_checkpoint() == loaded


def test_same_origin_and_non_browser_clients_act(server):
    own = {"Origin": server.url, "Sec-Fetch-Site": "same-origin"}
    assert httpx.post(server.url + "/sdapi/v1/interrupt", headers=own).status_code == 200
    assert httpx.post(server.url + "/sdapi/v1/interrupt").status_code == 200  # curl, scripts: no Origin at all
    other_name = {"Origin": f"http://localhost:{server.port}", "Host": f"localhost:{server.port}"}
    assert httpx.post(server.url + "/sdapi/v1/interrupt", headers=other_name).status_code == 200


def test_no_reflected_cors_and_foreign_preflight_refused(server):
    evil = "http://127.0.0.1:9"
    for path in ("/config", "/sdapi/v1/options", "/gradio_api/info", "/"):
        r = httpx.get(server.url + path, headers={"Origin": evil})
        assert not any(k.lower().startswith("access-control-") for k in r.headers), (path, dict(r.headers))
    pre = httpx.options(server.url + "/sdapi/v1/options",
                        headers={"Origin": evil, "Access-Control-Request-Method": "POST",
                                 "Access-Control-Request-Headers": "content-type"})  # fmt: skip
    assert pre.status_code == 403 and "access-control-allow-origin" not in pre.headers


def test_listed_origin_gets_cors(data_dir):
    friend = "http://localhost:3000"
    with running_server(data_dir, "--api", "--nowebui", "--cors-allow-origins", f"{friend}, http://x.test") as srv:
        pre = httpx.options(srv.url + "/sdapi/v1/options",
                            headers={"Origin": friend, "Access-Control-Request-Method": "POST"})  # fmt: skip
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == friend
        r = httpx.post(srv.url + "/sdapi/v1/interrupt", headers={"Origin": friend})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == friend
        assert httpx.post(srv.url + "/sdapi/v1/interrupt", headers={"Origin": "http://x.test:1"}).status_code == 403


def test_unknown_methods_are_405(server):
    for method in ("TRACE", "CONNECT", "PROPFIND", "FOO"):
        r = httpx.request(method, server.url + "/sdapi/v1/options")
        assert r.status_code == 405, method
        assert r.json()["error"] == "MethodNotAllowed" and "GET" in r.headers["allow"]


# --- error shapes ----------------------------------------------------------------------------------------


def test_queue_join_with_unknown_fn_index_is_404(server):
    own = {"Origin": server.url}
    r = httpx.post(server.url + "/gradio_api/queue/join", headers=own,
                   json={"data": [], "fn_index": 987654, "session_hash": "abc", "trigger_id": None})  # fmt: skip
    assert r.status_code == 404 and r.json() == {"detail": "no event handler with fn_index 987654",
                                                  "error": "UnknownFunction"}  # fmt: skip
    r = httpx.post(server.url + "/gradio_api/queue/join", headers=own, json={"fn_index": "x", "session_hash": "a"})
    assert r.status_code == 422 and r.json()["error"] == "ValidationError"


def test_fastapi_422_has_the_documented_shape(client):
    r = client.post("/txt2img", json={"steps": "many", "cfg_scale": [1] * 10_000})
    assert r.status_code == 422
    body = r.json()
    assert isinstance(body["detail"], str) and body["error"] == "RequestValidationError"
    assert "steps" in body["detail"] and isinstance(body["errors"], list)
    assert len(r.content) < 5_000  # the 10,000-item input is described, not echoed


# --- uploads ---------------------------------------------------------------------------------------------


def test_upload_limits(data_dir):
    with running_server(data_dir, "--max-body-mb", "1", "--max-upload-files", "2") as srv:
        own = {"Origin": srv.url}
        folder = Path(srv.app.fastapi and __import__("os").environ["GRADIO_TEMP_DIR"])
        before = UploadFolder(folder, 3600).size()
        big = httpx.post(srv.url + "/gradio_api/upload", headers=own,
                         files={"files": ("big.png", b"x" * (2 * 2**20), "image/png")})  # fmt: skip
        assert big.status_code == 413 and big.json()["error"] == "RequestTooLarge"
        many = httpx.post(srv.url + "/gradio_api/upload", headers=own,
                          files=[("files", (f"{i}.png", b"x" * 10, "image/png")) for i in range(3)])  # fmt: skip
        assert many.status_code == 413 and "3 files" in many.json()["detail"]
        assert UploadFolder(folder, 3600).size() == before  # nothing written
        ok = httpx.post(srv.url + "/gradio_api/upload", headers=own,
                        files=[("files", (f"{i}.png", b"y" * 10, "image/png")) for i in range(2)])  # fmt: skip
        assert ok.status_code == 200 and len(ok.json()) == 2
        assert all(Path(p).resolve().is_relative_to(folder.resolve()) for p in ok.json())


def test_upload_folder_is_swept_by_age(tmp_path):
    now = [10_000.0]
    folder = UploadFolder(tmp_path, ttl_seconds=600, clock=lambda: now[0], interval=60)
    old, new = tmp_path / "h1" / "old.png", tmp_path / "h2" / "new.png"
    for path, mtime in ((old, 10_000 - 601), (new, 10_000 - 10)):
        path.parent.mkdir()
        path.write_bytes(b"z" * 100)
        __import__("os").utime(path, (mtime, mtime))
    assert folder.sweep() == 1
    assert not old.exists() and not old.parent.exists() and new.exists()
    now[0] += 30
    folder.maybe_sweep()  # within the interval: no sweep
    now[0] += 600
    folder.maybe_sweep()
    assert not new.exists() and folder.size() == (0, 0)


def test_count_parts():
    body = b"--B\r\nContent-Disposition: form-data; name=files\r\n\r\nx\r\n--B\r\n\r\ny\r\n--B--\r\n"
    assert count_parts('multipart/form-data; boundary="B"', body) == 2
    assert count_parts("application/json", body) == 0


# --- lost clients ----------------------------------------------------------------------------------------


def _raw_post(port: int, path: str, payload: dict) -> socket.socket:
    body = json.dumps(payload).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
    return sock


def _wait(predicate, timeout: float = 30.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_client_that_disconnects_gets_its_jobs_stopped(server, client):
    service = server.app.service
    worker = service.worker
    running = _raw_post(server.port, "/sdapi/v1/img2img", job(steps=1000, denoising_strength=1.0, seed=3))
    assert _wait(lambda: client.get("/progress").json()["state"]["sampling_step"] > 0)
    queued = _raw_post(server.port, "/sdapi/v1/img2img", job(steps=1000, denoising_strength=1.0, seed=4))
    assert _wait(lambda: worker.pending == 1)
    queued.close()  # a queued job whose client left: cancelled, never started
    assert _wait(lambda: worker.pending == 0, 5)
    started = time.time()
    running.close()  # the running job: interrupted after its current step
    assert _wait(lambda: not worker.busy, 10), "the abandoned job kept running"
    assert time.time() - started < 10
    state = worker.last_state()
    assert state.interrupted and state.sampling_step < 999
    r = client.post("/img2img", json=job())  # the server goes on serving
    assert r.status_code == 200 and len(r.json()["images"]) == 1


def test_worker_cancel():
    worker = Worker()
    gate = threading.Event()
    try:
        first = worker.submit(lambda control: (gate.wait(10), control.interrupted)[1])
        second = worker.submit(lambda control: "ran")
        assert _wait(lambda: worker.busy)
        assert worker.cancel(second) == "cancelled" and worker.pending == 0
        assert worker.cancel(first) == "interrupted"
        gate.set()
        assert first.result(5) is True and second.cancelled()
        assert worker.cancel(first) == "done"
    finally:
        worker.stop()


def test_ui_generator_dropped_cancels_its_job(server, tmp_path):
    from modules.frontends.ui import make_handlers
    from tests.frontends.test_ui import base_values

    handlers = make_handlers(server.app.service, tmp_path / "out")
    image = tmp_path / "in.png"
    image.write_bytes(png(np.full((64, 64, 3), 128, np.uint8)))
    values = base_values(init_image=str(image), steps=1000.0, denoising_strength=1.0, sampler_name="Euler")
    gen = handlers.generate("img2img", values)
    next(gen), next(gen)  # submitted and waiting
    assert _wait(lambda: server.app.service.worker.busy)
    gen.close()  # what Gradio does when the browser leaves
    assert _wait(lambda: not server.app.service.worker.busy, 10)
    assert server.app.service.worker.last_state().interrupted


# --- wrong passwords -------------------------------------------------------------------------------------


def _guarded_stub(throttle: AuthThrottle) -> FastAPI:
    from modules.frontends.api import mount_api

    class StubService:
        def memory(self):
            return {"ram": {}}

    app = FastAPI()
    mount_api(app, StubService(), cmd_args.parse_args(["--nowebui", "--api-auth", "alice:s3cret"]), throttle)
    return app


def test_wrong_passwords_are_logged_and_slowed(caplog):
    now = [1000.0]
    throttle = AuthThrottle(clock=lambda: now[0], free_failures=3, base_delay=2.0, max_delay=30.0)
    with TestClient(_guarded_stub(throttle)) as c, caplog.at_level(logging.WARNING):
        assert c.get("/sdapi/v1/memory").status_code == 401  # no credentials: not a guess, not counted
        codes = [c.get("/sdapi/v1/memory", auth=("alice", f"guess{i}")).status_code for i in range(3)]
        assert codes == [401, 401, 401]  # the 3rd: 2 s to wait before the next try is checked
        blocked = c.get("/sdapi/v1/memory", auth=("alice", "s3cret"))  # even the right one, inside the window
        assert blocked.status_code == 429 and blocked.headers["retry-after"] == "2"
        assert blocked.json()["error"] == "TooManyRequests"
        now[0] += 2.1
        assert c.get("/sdapi/v1/memory", auth=("alice", "guess4")).status_code == 401  # 4th: 4 s
        assert throttle.wait_seconds("testclient") == pytest.approx(4.0)
        for _ in range(10):
            now[0] += 60
            c.get("/sdapi/v1/memory", auth=("alice", "x"))
        assert throttle.wait_seconds("testclient") == 30.0  # bounded
        now[0] += 30
        assert c.get("/sdapi/v1/memory", auth=("alice", "s3cret")).status_code == 200
        assert throttle.failures("testclient") == 0  # a success clears it
    lines = [r.getMessage() for r in caplog.records if "failed API log-in" in r.getMessage()]
    assert len(lines) == 14 and all("testclient" in line for line in lines)
    assert not any("guess" in r.getMessage() or "s3cret" in r.getMessage() for r in caplog.records)


def test_web_ui_login_failures_are_slowed():
    now = [0.0]
    throttle = AuthThrottle(clock=lambda: now[0], free_failures=1, base_delay=5.0)
    inner = FastAPI()

    @inner.post("/login")
    def login(password: str = "") -> dict:
        from fastapi import HTTPException

        if password != "ok":
            raise HTTPException(400, "Incorrect credentials.")
        return {"success": True}

    app = HttpGuard(inner, hosts=HostPolicy.build(server_name=None, listen=False, allowed_hosts="testserver"),
                    origins=OriginPolicy.build(None), limits=BodyLimits(2**20, 4), throttle=throttle)  # fmt: skip
    with TestClient(app) as c:
        assert c.post("/login?password=no").status_code == 400
        r = c.post("/login?password=ok")
        assert r.status_code == 429 and r.headers["retry-after"] == "5"
        now[0] += 5
        assert c.post("/login?password=ok").status_code == 200 and throttle.failures("testclient") == 0


# --- a hostile page in Chromium on another loopback port ------------------------------------------------

HOSTILE_PAGE = """<!doctype html><html><body>
<form id="f" method="POST" target="sink" action="{url}/sdapi/v1/unload-checkpoint"></form>
<iframe name="sink"></iframe>
<script>
window.results = {{}};
async function attack() {{
  for (const p of ["unload-checkpoint", "interrupt", "reload-checkpoint", "refresh-checkpoints"]) {{
    try {{ await fetch("{url}/sdapi/v1/" + p, {{method: "POST", mode: "no-cors"}}); }} catch (e) {{}}
  }}
  try {{ await fetch("{url}/sdapi/v1/options", {{method: "POST", mode: "no-cors",
         headers: {{"Content-Type": "text/plain"}}, body: JSON.stringify({{max_output_pixels: 67108864}})}}); }}
  catch (e) {{}}
  const fd = new FormData(); fd.append("files", new Blob(["x".repeat(1000)]), "a.png");
  try {{ await fetch("{url}/gradio_api/upload", {{method: "POST", mode: "no-cors", body: fd}}); }} catch (e) {{}}
  for (const path of ["/sdapi/v1/options", "/config", "/sdapi/v1/sd-models"]) {{
    try {{ const r = await fetch("{url}" + path); window.results[path] = await r.text(); }}
    catch (e) {{ window.results[path] = "blocked: " + e; }}
  }}
  try {{ const r = await fetch("{url}/sdapi/v1/options", {{method: "POST",
         headers: {{"Content-Type": "application/json"}}, body: JSON.stringify({{samples_save: false}})}});
         window.results.preflighted = await r.text(); }}
  catch (e) {{ window.results.preflighted = "blocked: " + e; }}
  document.getElementById("f").submit();
  window.done = true;
}}
attack();
</script></body></html>"""


class _Page(http.server.BaseHTTPRequestHandler):
    html = b""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(self.html)

    def log_message(self, *args):
        pass


def test_hostile_page_in_chromium_cannot_act_or_read(server, caplog):
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("no /usr/bin/chromium")
    service = server.app.service
    loaded, limits = service.current_checkpoint(), service.settings.max_output_pixels
    handler = type("Hostile", (_Page,), {"html": HOSTILE_PAGE.format(url=server.url).encode()})
    page_server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=page_server.serve_forever, daemon=True).start()
    uploads = UploadFolder(Path(__import__("os").environ["GRADIO_TEMP_DIR"]), 3600)
    before = uploads.size()
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
    try:
        with playwright.sync_playwright() as p, caplog.at_level(logging.WARNING):
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{page_server.server_address[1]}/")
            page.wait_for_function("window.done === true", timeout=30_000)
            page.wait_for_timeout(1000)  # the form's navigation
            results = page.evaluate("window.results")
            browser.close()
    finally:
        page_server.shutdown()
    assert service.current_checkpoint() == loaded and service.models.current is not None  # not unloaded
    assert service.settings.max_output_pixels == limits and service.settings.samples_save  # nothing changed
    assert uploads.size() == before  # nothing uploaded
    for path, text in results.items():
        assert text.startswith("blocked"), (path, text[:200])  # the page read nothing
    refused = [r.getMessage() for r in caplog.records if "another site's page" in r.getMessage()]
    assert any("unload-checkpoint" in m for m in refused) and any("upload" in m for m in refused)
