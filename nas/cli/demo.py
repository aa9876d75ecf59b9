"""`nas demo`: try a student in the browser."""

from __future__ import annotations

import argparse

from nas.cli.common import port, window_fraction
from search_spaces.common.errors import InvalidValueError
from search_spaces.students.student import DEFAULT_WINDOW


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="serve a local page: pick an image, click, see the mask",
        description="Serve a page on http://HOST:PORT: pick one of the bundled photos or upload an image; left "
                    "click adds a positive click, right click or shift-click a negative one, Undo removes the "
                    "last click. The mask is the student's, for the whole object (or its --window around the tap).",
        epilog="example: nas demo --checkpoint runs/distill/X/student.pt --port 8000")
    parser.add_argument("--checkpoint", required=True, help="student checkpoint (student.pt)")
    parser.add_argument("--port", type=port, default=8000, help="default %(default)s")
    parser.add_argument("--host", default="127.0.0.1", help="default %(default)s (this machine only)")
    parser.add_argument("--window", type=window_fraction, default=DEFAULT_WINDOW,
                        help="output window side as a fraction of the resolution, or 'full' (default full: the "
                             "whole object)")
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from nas.deploy.demo import DemoApp, make_server
    from search_spaces.students.segmenter import Segmenter

    app = DemoApp(Segmenter.from_checkpoint(args.checkpoint, window=args.window))
    try:
        server = make_server(app, args.host, args.port)
    except OSError as err:  # the port is taken, or the host is not this machine's
        raise InvalidValueError(f"cannot serve on {args.host}:{args.port} ({err.strerror or err})") from None
    print(f"TraceNAS demo on http://{args.host}:{server.server_port} (Ctrl-C stops it)")
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
