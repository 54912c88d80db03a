"""``main``: the parsed options -> the Service (``app.bootstrap``) -> the served app (``frontends.server``) -> uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn

from modules.app import bootstrap
from modules.app.options import parse_args
from modules.frontends.server import create_app

log = logging.getLogger("webui")


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    bootstrap.prepare_process(options.log_level)
    service = bootstrap.create_service(options)
    app = create_app(service, options)
    bootstrap.load_initial_model(service, options)
    log.info("Serving on http://%s:%d%s", options.host, options.port, "" if options.nowebui else " (web UI at /)")
    uvicorn.run(app.fastapi, host=options.host, port=options.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
