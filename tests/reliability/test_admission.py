"""Memory admission and bounded settings (issue 15): what does not fit is refused before it is queued,
limits are raised only with a log-in and never above their maxima, and no value is echoed whole."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import httpx
import pytest
import yaml

from modules.app.checks import (
    SD2_BYTES_PER_PIXEL,
    InsufficientMemoryError,
    MemoryBudget,
    check_memory,
    check_request,
    memory_budget,
)
from modules.core.errors import ValidationError
from modules.core.request import GenerationRequest
from modules.core.settings import MAX_LIST, LimitRaiseError, Settings, check_limit_raise
from tests.helpers.server import running_server
from tests.reliability.test_reliability_network import job

ROOT = Path(__file__).resolve().parents[2]
GiB = 2**30


def full_size_vae_widths() -> list[int]:
    """SD2 depth's VAE widths from the shipped LDM config (512-depth-ema's real layout): ch x ch_mult."""
    config = yaml.safe_load((ROOT / "configs" / "v2-midas-inference.yaml").read_text())
    dd = config["model"]["params"]["first_stage_config"]["params"]["ddconfig"]
    return [dd["ch"] * m for m in dd["ch_mult"]]


def test_full_size_estimate_matches_the_measured_peaks():
    budget = MemoryBudget.for_vae(24 * GiB, full_size_vae_widths())
    assert full_size_vae_widths() == [128, 256, 512, 512]
    assert budget.bytes_per_pixel == SD2_BYTES_PER_PIXEL
    # BENCHMARKS.md 4: 512^2 x 4 decode peaked 14,501 MiB, 512^2 x 1 7,453-8,031 MiB: 7.0 GB apart
    delta = budget.peak_bytes(512, 512, 4) - budget.peak_bytes(512, 512, 1)
    assert delta / 2**20 == pytest.approx(14_501 - 7_453, rel=0.01)
    assert budget.peak_bytes(2048, 2048, 1) / GiB == pytest.approx(37.2, abs=0.2)  # the "~35 GiB"


def test_a_default_valid_2048_request_is_refused_on_a_24_gib_machine():
    request = GenerationRequest(width=2048, height=2048, init_images=[])
    check_request(request, Settings())  # valid by every other rule (max_output_pixels = 2048^2)
    budget = MemoryBudget.for_vae(20 * GiB, full_size_vae_widths())  # a 24 GiB machine with the model resident
    with pytest.raises(InsufficientMemoryError) as e:
        check_request(request, Settings(), budget=budget)
    message = str(e.value)
    assert e.value.status_code == 413
    assert "2048x2048 x batch size 1 needs about 37.2 GiB of RAM" in message and "20.0 GiB are free" in message
    side = budget.largest_side(1)
    assert f"at most {side}x{side} fits" in message and side == 1488  # (20 GiB - 0.5 GiB) / 9,400 B = 2.23 Mpx
    assert budget.peak_bytes(side, side, 1) <= budget.available < budget.peak_bytes(side + 8, side + 8, 1)
    check_memory(GenerationRequest(width=side, height=side), budget)  # the size it names is admitted


def test_batches_and_aspect_ratios():
    budget = MemoryBudget.for_vae(20 * GiB, full_size_vae_widths())
    check_memory(GenerationRequest(width=512, height=512, batch_size=8), budget)  # 19.3 GiB: fits
    with pytest.raises(InsufficientMemoryError, match=r"or batch size 8 at 512x512"):
        check_memory(GenerationRequest(width=512, height=512, batch_size=16), budget)
    check_memory(GenerationRequest(width=512, height=512, batch_size=1, n_iter=64), budget)  # one batch at a time
    with pytest.raises(InsufficientMemoryError, match=r"at most 2104x1048 fits"):
        check_memory(GenerationRequest(width=4096, height=2048), budget)
    half = MemoryBudget.for_vae(16 * GiB, full_size_vae_widths(), dtype_bytes=2, where="GPU memory")  # float16
    assert half.bytes_per_pixel == SD2_BYTES_PER_PIXEL / 2
    with pytest.raises(InsufficientMemoryError, match="GPU memory"):
        check_memory(GenerationRequest(width=2048, height=2048), half)


def test_tiny_model_budget_and_the_api_refusal(server, client):
    budget = memory_budget(server.app.service.models.current)
    assert budget is not None and budget.bytes_per_pixel == SD2_BYTES_PER_PIXEL * 32 / 256  # tiny VAE: 32 wide
    assert budget.available > 0
    r = client.post("/img2img", json=job(width=2048, height=2048, batch_size=64, n_iter=1))
    if budget.peak_bytes(2048, 2048, 64) > budget.available:  # 75 GB for the tiny VAE: more than this machine
        assert r.status_code == 413 and r.json()["error"] == "InsufficientMemoryError"
        assert "fits" in r.json()["detail"]
    assert not server.app.service.worker.busy  # refused before queueing


# --- limits and bounded values ---------------------------------------------------------------------------


def test_limits_have_maxima_and_need_a_log_in():
    s = Settings()
    with pytest.raises(ValidationError, match="above the maximum"):
        s.override({"max_output_pixels": 10**12})
    with pytest.raises(ValidationError, match="above the maximum"):
        s.override({"max_batch_images": 10**6})
    with pytest.raises(LimitRaiseError) as e:
        check_limit_raise(s, {"max_output_pixels": 4096 * 4096}, allowed=False)
    assert e.value.status_code == 403
    check_limit_raise(s, {"max_output_pixels": 1024 * 1024, "max_batch_images": 64}, allowed=False)  # lower/same
    check_limit_raise(s, {"max_output_pixels": 4096 * 4096}, allowed=True)


def test_options_route_without_log_in_cannot_raise_limits(server, client):
    before = server.app.service.settings
    for name, value in (("max_output_pixels", 4096 * 4096), ("max_batch_images", 500), ("max_input_pixels", 2**28)):
        r = client.post("/options", json={name: value})
        assert r.status_code == 403, name
        assert r.json()["error"] == "LimitRaiseError" and name in r.json()["detail"]
    r = client.post("/options", json={"max_output_pixels": 10**12})
    assert r.status_code == 422 and "maximum" in r.json()["detail"]
    assert server.app.service.settings.max_output_pixels == before.max_output_pixels
    try:
        assert client.post("/options", json={"max_batch_images": 32}).status_code == 200  # lowering is fine
        assert server.app.service.settings.max_batch_images == 32
    finally:
        server.app.service.update_settings({"max_batch_images": before.max_batch_images})


def test_logged_in_admin_can_raise_limits(data_dir):
    with running_server(data_dir, "--api", "--nowebui", "--api-auth", "admin:pw") as srv:
        with httpx.Client(base_url=srv.url + "/sdapi/v1", auth=("admin", "pw")) as c:
            assert c.post("/options", json={"max_batch_images": 100}).status_code == 200
            assert srv.app.service.settings.max_batch_images == 100
            assert c.post("/options", json={"max_batch_images": 1001}).status_code == 422


def test_a_57_mb_list_setting_is_refused_quickly(server):
    names = [f"extension-{i:07d}" for i in range(3_000_000)]
    body = json.dumps({"disabled_extensions": names})
    assert len(body) > 50_000_000
    started = time.perf_counter()
    r = httpx.post(server.url + "/sdapi/v1/options", content=body, headers={"Content-Type": "application/json"},
                   timeout=120)  # fmt: skip
    assert r.status_code == 422 and f"at most {MAX_LIST}" in r.json()["detail"]
    assert len(r.content) < 1000 and time.perf_counter() - started < 60
    assert len(server.app.service.settings.disabled_extensions) < MAX_LIST
    with pytest.raises(ValidationError, match="at most 4096"):
        Settings().override({"samples_filename_pattern": "x" * 5000})
    with pytest.raises(ValidationError) as e:
        Settings().override({"samples_save": list(range(10**6))})
    assert len(str(e.value)) < 200


def test_many_unknown_override_keys_are_summarised(client, caplog):
    keys = {f"unknown_option_{i}": i for i in range(200_000)}
    with caplog.at_level(logging.WARNING):
        r = client.post("/img2img", json=job(override_settings=keys))
    assert r.status_code == 200
    warnings = json.loads(r.json()["info"])["warnings"]
    line = next(w for w in warnings if w.startswith("override_settings"))
    assert "... and 199990 more" in line and len(line) < 1000
    logged = [rec.getMessage() for rec in caplog.records if "override_settings" in rec.getMessage()]
    assert logged and max(map(len, logged)) < 2000
