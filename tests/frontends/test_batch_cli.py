"""The batch command line: pairing by name, depth and mask folders, resume, failures, the reusable run_batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.frontends.batch import cli as batch_cli
from modules.frontends.batch.plan import BatchItem, BatchOptions, find_partner, plan_batch
from modules.frontends.batch.runner import run_folder
from tests.helpers.server import populate

ROOT = Path(__file__).resolve().parents[2]
W, H = 96, 64


def picture(seed: int = 0, w: int = W, h: int = H) -> np.ndarray:
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    return np.clip(base + rng.randint(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def z_depth(near_left: bool) -> np.ndarray:
    """A Blender-style 16-bit Z pass: far = larger."""
    x = np.arange(W)[None, :].repeat(H, 0).astype(np.float64)
    z = 20000 + 300 * (x if near_left else (W - 1 - x))
    return z.astype(np.uint16)


def read(path: Path) -> Image.Image:
    img = Image.open(path)
    img.load()
    return img


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, depth_ckpt) -> Path:
    d = tmp_path_factory.mktemp("batch-data")
    populate(d, depth_ckpt)
    return d


def run(data_dir: Path, *argv: str) -> int:
    return batch_cli.main(["--data-dir", str(data_dir), "--steps", "3", "--seed", "5", *argv])


# --- pairing ---------------------------------------------------------------------------------------


def test_find_partner_rules(tmp_path):
    def files(*names):
        return [tmp_path / n for n in names]

    img = tmp_path / "frame_0007.png"
    assert find_partner(img, files("a.png", "frame_0007.tif", "frame_0008.png")).name == "frame_0007.tif"
    assert find_partner(img, files("frame_0007-depth.png", "frame_0008-depth.png")).name == "frame_0007-depth.png"
    assert find_partner(img, files("Depth0007.png", "Depth0008.png")).name == "Depth0007.png"  # Blender passes
    assert find_partner(img, files("Depth0017.png", "Depth0008.png")) is None  # 17 is not 7
    assert find_partner(img, files("only.png")).name == "only.png"  # one file serves every image
    assert find_partner(img, files("x.png", "y.png")) is None


def test_plan_reports_missing_partners_and_collisions(tmp_path):
    save(tmp_path / "in" / "a.png", picture())
    save(tmp_path / "in" / "b.png", picture())
    (tmp_path / "in" / "b.jpg").write_bytes((tmp_path / "in" / "b.png").read_bytes())
    save(tmp_path / "depth" / "a.png", z_depth(True))
    save(tmp_path / "depth" / "zz.png", z_depth(True))
    items = plan_batch(BatchOptions(tmp_path / "in", tmp_path / "out", depth_dir=tmp_path / "depth"))
    by_name = {i.image.name: i for i in items}
    assert by_name["a.png"].depth.name == "a.png" and by_name["a.png"].problem is None
    assert "no depth map" in by_name["b.png"].problem
    assert "same name as" in by_name["b.png"].problem or "same name as" in by_name["b.jpg"].problem
    with pytest.raises(Exception, match="another folder"):
        plan_batch(BatchOptions(tmp_path / "in", tmp_path / "in"))


# --- the command line ------------------------------------------------------------------------------


def test_colour_and_depth_passes_paired_by_frame_number(tmp_path, data_dir):
    inp, dep, out = tmp_path / "render", tmp_path / "depth", tmp_path / "out"
    save(inp / "Image0001.png", picture(1))
    save(inp / "Image0002.png", picture(2))
    save(dep / "Depth0001.png", z_depth(near_left=True))
    save(dep / "Depth0002.png", z_depth(near_left=False))
    code = run(data_dir, "--input", str(inp), "--depth-dir", str(dep), "--output", str(out), "--depth-invert",
               "--prompt", "a castle")  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "Image0001-depth.png", "Image0001.png", "Image0002-depth.png", "Image0002.png",
    ]  # fmt: skip
    for frame, near_left in (("Image0001", True), ("Image0002", False)):
        img = read(out / f"{frame}.png")
        assert img.size == (W, H)
        text = img.info["parameters"]
        assert text.startswith("a castle\n") and "Depth source: uploaded map" in text and "Seed: 5" in text
        d = read(out / f"{frame}-depth.png")
        assert d.mode.startswith("I;16") and d.size == (W, H)
        arr = np.asarray(d, dtype=np.float64)
        assert (arr[:, :8].mean() > arr[:, -8:].mean()) == near_left  # white = near, from the z pass


def test_mask_dir_inpaints_only_the_mask(tmp_path, data_dir):
    inp, masks, out = tmp_path / "in", tmp_path / "masks", tmp_path / "out"
    src = picture(3)
    save(inp / "shot.png", src)
    mask = np.zeros((H, W), np.uint8)
    mask[:, W // 2 :] = 255
    save(masks / "shot.png", mask)
    code = run(data_dir, "--input", str(inp), "--mask-dir", str(masks), "--output", str(out),
               "--mask-blur", "0", "--inpainting-fill", "original", "--denoising-strength", "1")  # fmt: skip
    assert code == 0
    result = np.asarray(read(out / "shot.png").convert("RGB"))
    assert np.array_equal(result[:, : W // 2], src[:, : W // 2])
    assert not np.array_equal(result[:, W // 2 :], src[:, W // 2 :])
    assert "Mask blur: 0" in read(out / "shot.png").info["parameters"]


def test_resume_skips_done_files(tmp_path, data_dir, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        save(inp / f"p{i}.png", picture(i))
    assert run(data_dir, "--input", str(inp), "--output", str(out)) == 0
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("p?.png")}
    (out / "p1.png").unlink()
    capsys.readouterr()
    assert run(data_dir, "--input", str(inp), "--output", str(out)) == 0
    err = capsys.readouterr().err
    assert "1 done, 2 skipped" in err
    assert (out / "p1.png").exists()
    assert all((out / n).stat().st_mtime_ns == t for n, t in mtimes.items() if n != "p1.png")
    assert run(data_dir, "--input", str(inp), "--output", str(out), "--overwrite") == 0
    assert "3 done, 0 skipped" in capsys.readouterr().err


def test_explicit_size_and_more_images_per_input(tmp_path, data_dir):
    inp, out = tmp_path / "in", tmp_path / "out"
    save(inp / "big.png", picture(0, 160, 120))
    assert run(data_dir, "--input", str(inp), "--output", str(out), "--width", "64", "--height", "64",
               "--n-iter", "2") == 0  # fmt: skip
    assert read(out / "big.png").size == (64, 64) and read(out / "big-2.png").size == (64, 64)
    assert "Seed: 6" in read(out / "big-2.png").info["parameters"]


def test_usage_errors_exit_2(tmp_path, data_dir, capsys):
    save(tmp_path / "in" / "a.png", picture())
    out = str(tmp_path / "out")
    assert run(data_dir, "--input", str(tmp_path / "missing"), "--output", out) == 2
    assert "not a folder" in capsys.readouterr().err
    assert run(data_dir, "--input", str(tmp_path / "in"), "--output", out, "--sampler", "Nope") == 2
    assert "unknown sampler" in capsys.readouterr().err
    assert run(data_dir, "--input", str(tmp_path / "in"), "--output", out, "--width", "64") == 2
    assert run(data_dir, "--input", str(tmp_path / "in"), "--output", out, "--ckpt", "no-such-model") == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "out" / "a.png").exists()


def test_broken_file_fails_alone_through_launch_py(tmp_path, data_dir):
    """The real command: `python launch.py batch ...`; one broken input -> exit 1, the others written."""
    inp, out = tmp_path / "in", tmp_path / "out"
    save(inp / "a.png", picture(1))
    (inp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    save(inp / "c.png", picture(2))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "batch", "--skip-install", "--data-dir", str(data_dir),
         "--input", str(inp), "--output", str(out), "--steps", "2"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert (out / "a.png").exists() and (out / "c.png").exists() and not (out / "broken.png").exists()
    assert "2 done, 0 skipped (already done), 1 failed" in proc.stderr
    assert "FAILED broken.png" in proc.stderr and "could not read the image" in proc.stderr
    assert "100%" in proc.stderr  # the tqdm bar ran to the end


# --- the reusable function (the web UI's Batch tab) ------------------------------------------------


def test_run_folder_with_a_service_progress_and_stop(tmp_path, data_dir):
    from modules.app import bootstrap
    from modules.app import options as cmd_args
    from modules.core.request import GenerationRequest

    for i in range(3):
        save(tmp_path / "in" / f"{i}.png", picture(i))
    service = bootstrap.create_service(cmd_args.parse_args(["--data-dir", str(data_dir), "--skip-install"]))
    try:
        events = []
        options = BatchOptions(tmp_path / "in", tmp_path / "out")
        template = GenerationRequest(prompt="tree", steps=2, seed=1)
        report = run_folder(service, template, options, progress=lambda d, n, o: events.append((d, n, o.status)),
                           should_stop=lambda: len(events) >= 2)  # fmt: skip
        assert events == [(1, 3, "done"), (2, 3, "done")]
        assert report.interrupted and report.count("done") == 2 and "1 not started" in report.summary(3)
        assert sorted(p.name for p in (tmp_path / "out").glob("?.png")) == ["0.png", "1.png"]
        items = [BatchItem(tmp_path / "in" / "2.png", tmp_path / "out" / "2.png", problem=None)]
        report = run_folder(service, template, options, items=items)
        assert report.count("done") == 1
        assert read(tmp_path / "out" / "2.png").info["parameters"].startswith("tree\n")
    finally:
        service.close()
