"""browse RUN/features.sqlite in a local web dashboard
Serve the feature dashboard of a run: a sortable feature list, a page per feature, "what fires here?" for
pasted text, and JSON for every page.
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  sparsecode serve runs/demo
  sparsecode serve runs/demo --port 8080
  sparsecode serve runs/demo --host 0.0.0.0    # reachable from other machines: only on a trusted network
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run folder holding features.sqlite (see `sparsecode features`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port")


def run(args: argparse.Namespace) -> int:
    from ..dashboard.server import serve

    serve(args.run, host=args.host, port=args.port)
    return 0
