"""The ``zoo`` command: the parser assembled from the command-group modules, and the exit codes.

Input errors (recipe, data, model files) and file-system errors (a read-only or full disk, an output path below a
file) exit with code 2 and a message naming the file and field or the path; nothing is written before the inputs
have been checked.
"""

from __future__ import annotations

import argparse
import sys

from zoo.cli import measure, publish, train
from zoo.training.interrupt import StoppedBySignal
from zoo.version import __version__

EXIT_INPUT_ERROR = 2
EXIT_NONFINITE = 3
COMMAND_GROUPS = (train, measure, publish)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zoo", description="growzoo: efficient ViTs for timm (growth, unfreezing, routing)"
    )
    p.add_argument("--version", action="version", version=f"zoo (growzoo) {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args) or 0
    except ValueError as e:
        # RecipeError, DataError and ModelLoadError are ValueErrors whose message names the file and the field
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except OSError as e:  # a missing input, a read-only or full disk, an output path below a file: name the path
        if e.filename is None:  # raised with a message of its own
            print(f"error: {e}", file=sys.stderr)
        else:
            extra = f" -> {e.filename2}" if e.filename2 is not None else ""
            print(f"error: {e.filename}{extra}: {e.strerror or e}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except StoppedBySignal as e:  # Ctrl-C / SIGTERM: stopped at a step boundary with a checkpoint
        print(f"stopped: {e}", file=sys.stderr)
        return 128 + e.signum
    except FloatingPointError as e:  # non-finite loss under train.nonfinite: stop (the last good checkpoint is kept)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
