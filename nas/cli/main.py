"""`nas`: the TraceNAS command line. Each subcommand lives in `nas.cli.<name>`."""

from __future__ import annotations

import argparse
import os
import sys

from nas import __version__
from nas.cli import demo, distill, eval, export, latency, predictor, profile, search, space
from search_spaces.common.errors import TraceNASError

DESCRIPTION = """TraceNAS: find and train tiny TraceNet-style tap-to-segment models for phones.

Workflow: inspect a search space (nas space show), sample members with their FLOPs
(nas space sample) and verify receptive-field cropping (nas space check-tracing);
measure a device's latency table (nas profile) and price architectures on it
(nas latency predict, nas latency tables); search the best student under a
latency budget on a target (nas search --target iphone13 --budget 5ms); distill a
teacher into it (nas distill --config experiments/smoke.yaml) and train supernets
(nas train-supernet); evaluate students and teachers (nas eval); export to phone
runtimes (nas export), measure them here (nas bench) and try them (nas demo).
Run 'nas COMMAND --help' for the options of each command."""

COMMANDS = (space, profile, latency, search, predictor, distill, eval, export, demo)


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line on stderr, with exit code 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="nas", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tracenas {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an input error too (bugs always show theirs)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly, like other CLI tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except TraceNASError as err:  # caused by input: bad names, files, values — one line, exit 2
        if args.debug:
            raise
        message = str(err).strip().splitlines()
        print(f"nas {args.command}: error: {message[0] if message else type(err).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
