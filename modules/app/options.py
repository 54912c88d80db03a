"""Command-line options (A1111's names where they apply): one typed ``Options`` built once from argparse.

Never parsed at import time.  ``add_setup_flags`` is the one definition of the flags that say how the
program is set up (folders, device, precision, memory); the web UI's parser and the batch command's
parser both use it, so they cannot drift.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def add_setup_flags(parser: argparse.ArgumentParser) -> None:
    """Folders, checkpoint loading, device, precision and memory flags (the web UI's and the batch command's)."""
    models = parser.add_argument_group("models")
    models.add_argument("--ckpt-dir", type=Path, default=None, help="extra folder scanned for checkpoints")
    models.add_argument("--upscaler-dir", type=Path, action="append", default=None,
                        help="extra folder scanned for upscaler models (ESRGAN, SwinIR, DAT...); may be repeated")  # fmt: skip
    models.add_argument("--lora-dir", type=Path, default=None, help="extra folder scanned for LoRA / LyCORIS files")
    models.add_argument("--embeddings-dir", type=Path, default=None, help="extra folder of textual-inversion embeddings")
    models.add_argument("--vae-dir", type=Path, default=None, help="extra folder scanned for VAE files")
    models.add_argument("--ckpt", default=None, help="checkpoint to load first (name, title, hash or file path)")
    models.add_argument("--no-hashing", action="store_true", help="do not sha256 checkpoints (titles show no hash)")
    models.add_argument(
        "--allow-symlinks-out",
        action="store_true",
        help="list checkpoints that are symbolic links to files outside the model folders (skipped by default)",
    )
    models.add_argument(
        "--disable-safe-unpickle",
        action="store_true",
        help="load .ckpt files with the full unpickler, which can run code: only for files you trust",
    )
    models.add_argument("--data-dir", type=Path, default=ROOT, help="where models/, outputs/ and config.json live")

    compute = parser.add_argument_group("compute")
    compute.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"], help="torch device")
    compute.add_argument(
        "--precision",
        default="autocast",
        choices=["full", "autocast"],
        help="full: float32 everywhere; autocast: float16 (bfloat16 where supported) on GPU, float32 on CPU",
    )
    compute.add_argument("--no-half", action="store_true", help="keep the model in float32 (same as --precision full)")
    compute.add_argument(
        "--cpu-bf16",
        default=None,
        choices=["auto", "on", "off"],
        help="CPU with --precision autocast: bfloat16 UNet weights when a start-up probe measures bfloat16 fast "
        "(auto; AMX / AVX-512 BF16 CPUs), always (on) or never (off); default: $SD_CPU_BF16, else auto",
    )
    vram = compute.add_mutually_exclusive_group()
    vram.add_argument(
        "--medvram",
        action="store_true",
        help="keep the weights in RAM and move each part (text encoder, MiDaS, VAE, UNet) to the GPU only while "
        "it runs: much less VRAM, a little slower; no effect with --device cpu",
    )
    vram.add_argument(
        "--lowvram",
        action="store_true",
        help="as --medvram with smaller parts (the UNet block by block): the least VRAM, much slower",
    )
    compute.add_argument(
        "--malloc-default",
        action="store_true",
        help="leave glibc's allocator as it is (by default freed memory is reused within a job: ~7%% faster on CPU)",
    )
    add_cluster_flags(parser)


def add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    """--ray ADDRESS, --ray-workers N, --ray-gpus-per-worker G: generation jobs on Ray actors (README: Cluster)."""
    cluster = parser.add_argument_group("cluster (Ray)")
    cluster.add_argument("--ray", default=None, metavar="ADDRESS",
                         help="run generation on a Ray cluster: local (a throwaway instance here), auto (the cluster "
                         "this machine joined), ray://HOST:10001 or HOST:6379; needs ray[default]")  # fmt: skip
    cluster.add_argument("--ray-workers", type=int, default=1, help="Ray workers (actors), each with the model loaded")
    cluster.add_argument("--ray-gpus-per-worker", type=float, default=None, metavar="G",
                         help="GPUs each worker reserves (default: 1 when the cluster has GPUs, else 0)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="launch.py",
        description="Stable Diffusion 2 depth-to-image web UI. Sets up its environment, then starts the server.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    net = p.add_argument_group("server")
    net.add_argument("--listen", action="store_true", help="listen on 0.0.0.0 (all interfaces) instead of 127.0.0.1")
    net.add_argument("--server-name", default=None, help="host name or address to bind (overrides --listen)")
    net.add_argument("--port", type=int, default=7860, help="port to serve on")
    net.add_argument("--api", action="store_true", help="serve the A1111-compatible HTTP API under /sdapi/v1/")
    net.add_argument("--nowebui", action="store_true", help="serve only the HTTP API, no web UI (implies --api)")
    net.add_argument(
        "--api-auth",
        default=None,
        metavar="USER:PASS[,USER:PASS]",
        help="HTTP Basic auth for the API (and every other route outside the web UI); "
        "without --gradio-auth it is also the web UI's log-in",
    )
    net.add_argument(
        "--gradio-auth",
        default=None,
        metavar="USER:PASS[,USER:PASS]",
        help="log-in for the web UI; without --api-auth it is also the API's HTTP Basic auth",
    )
    net.add_argument("--max-body-mb", type=float, default=64.0, help="largest accepted HTTP request body, in MiB")
    net.add_argument(
        "--allowed-hosts",
        default=None,
        metavar="HOST[,HOST]",
        help="more host names the server answers to (Host header); '*' turns the check off. Always allowed: "
        "localhost, loopback addresses, --server-name; with --listen also any IP address and this machine's names",
    )
    net.add_argument(
        "--cors-allow-origins",
        default=None,
        metavar="ORIGIN[,ORIGIN]",
        help="other web pages (e.g. http://localhost:3000) allowed to call the API and the UI from a browser; "
        "by default only the server's own pages may change anything",
    )
    net.add_argument("--max-upload-files", type=int, default=16, help="most files one web UI upload request may carry")
    net.add_argument(
        "--upload-ttl-minutes", type=float, default=60.0, help="web UI uploads are deleted after this many minutes"
    )
    net.add_argument("--theme", choices=["default", "light", "dark"], default="default",
                     help="the web UI's colours (a ?__theme=light|dark in the page's address wins)")  # fmt: skip

    add_setup_flags(p)

    setup = p.add_argument_group("setup")
    setup.add_argument("--skip-install", action="store_true", help="do not check or install requirements")
    setup.add_argument("--venv", type=Path, default=ROOT / "venv", help="virtual environment to create and use")
    setup.add_argument("--log-level", default="INFO", choices=LOG_LEVELS)
    return p


@dataclass(frozen=True)
class Options:
    """The parsed command line, typed; every flag of ``build_parser`` is a field with the parser's default."""

    listen: bool = False
    server_name: str | None = None
    port: int = 7860
    api: bool = False
    nowebui: bool = False
    api_auth: str | None = None
    gradio_auth: str | None = None
    max_body_mb: float = 64.0
    allowed_hosts: str | None = None
    cors_allow_origins: str | None = None
    max_upload_files: int = 16
    upload_ttl_minutes: float = 60.0
    theme: str = "default"
    ckpt_dir: Path | None = None
    upscaler_dir: list[Path] | None = None
    lora_dir: Path | None = None
    embeddings_dir: Path | None = None
    vae_dir: Path | None = None
    ckpt: str | None = None
    no_hashing: bool = False
    allow_symlinks_out: bool = False
    disable_safe_unpickle: bool = False
    data_dir: Path = ROOT
    device: str = "auto"
    precision: str = "autocast"
    no_half: bool = False
    cpu_bf16: str | None = None
    medvram: bool = False
    lowvram: bool = False
    malloc_default: bool = False
    ray: str | None = None
    ray_workers: int = 1
    ray_gpus_per_worker: float | None = None
    skip_install: bool = False
    venv: Path = ROOT / "venv"
    log_level: str = "INFO"

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> Options:
        """The options a parser produced (flags it does not have keep their defaults), with the implied ones set."""
        names = {f.name for f in dataclasses.fields(cls)}
        opts = cls(**{k: v for k, v in vars(ns).items() if k in names})
        # one log-in protects everything: the UI and the API can each do all the other can (generate, settings)
        return dataclasses.replace(
            opts,
            api=opts.api or opts.nowebui,
            api_auth=opts.api_auth or opts.gradio_auth,
            gradio_auth=opts.gradio_auth or opts.api_auth,
        )

    @property
    def host(self) -> str:
        return self.server_name or ("0.0.0.0" if self.listen else "127.0.0.1")

    def model_folders(self) -> list[Path]:
        folders = [Path(self.data_dir) / "models" / "Stable-diffusion"]
        if self.ckpt_dir:
            folders.append(Path(self.ckpt_dir))
        return folders


def parse_args(argv: list[str] | None = None) -> Options:
    return Options.from_namespace(build_parser().parse_args(argv))


def parse_auth(spec: str | None) -> dict[str, str]:
    """'user:pass,user2:pass2' -> {user: pass}."""
    if not spec:
        return {}
    out = {}
    for item in spec.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user:
            raise SystemExit(f"invalid credentials {item!r}: expected USER:PASS")
        out[user] = password
    return out
