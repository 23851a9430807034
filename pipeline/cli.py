"""Command line: `python -m pipeline <stage> --config FILE [section.key=value ...]`.

Parses arguments and dispatches to `pipeline.run` (or the backbone list, predict, search).
User errors (`pipeline.errors.UserError`: a bad config, missing data, no network) are printed
as one clear line with exit status 2 instead of a traceback; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline.config import load_config  # noqa: E402
from pipeline.errors import ConfigError, UserError  # noqa: E402
from pipeline.run import STAGES  # noqa: E402

COMMANDS = (*STAGES, "all", "predict", "demo", "backbones", "search", "lr-find")


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """Parses `<stage> [--options] [section.key=value ...]` in any order.

    The stage is the first word without "="; every word with "=" is a config override, so
    `python -m pipeline --config X train.head_epochs=5 train` and
    `python -m pipeline train --config X train.head_epochs=5` mean the same. After `predict`,
    the other words without "=" are the image files and folders to classify.
    """
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        usage=f"python -m pipeline {{{','.join(COMMANDS)}}} [--config FILE] [--force] "
              "[section.key=value ...]\n       python -m pipeline predict --model models/<run> "
              "[--top-k K] [--format table|json|csv] PATH ...\n"
              "       python -m pipeline demo --model models/<run> [--port PORT]",
        description="Staged transfer learning: data -> preview -> train -> evaluate -> export. "
                    "Commands: 'all' runs every stage, skipping those that are fresh; 'search' "
                    "tries random hyperparameters on dev, coarse to fine; 'lr-find' sweeps "
                    "the head's learning rate.")
    parser.add_argument("words", nargs="*", metavar="command | section.key=value",
                        help=f"one command ({', '.join(COMMANDS)}) and any config overrides, "
                             "e.g. train.head_epochs=5, in any order")
    parser.add_argument("--config", default="configs/default.yaml", help="YAML experiment file")
    parser.add_argument("--force", action="store_true", help="rerun stages even if fresh")
    parser.add_argument("--images", action="append", default=[],
                        help="predict: an image file or a folder of images (as a PATH word)")
    parser.add_argument("--model", help="predict, demo: an exported model folder (default: "
                                        "<models_dir>/<run name>)")
    parser.add_argument("--top-k", type=int, default=3,
                        help="predict: how many classes to list per image (default 3)")
    parser.add_argument("--format", default="table",
                        help="predict: table, json or csv, on standard output (default table)")
    parser.add_argument("--port", type=int, default=8000,
                        help="demo: the port on 127.0.0.1 (default 8000; 0 picks a free one)")
    arguments = parser.parse_intermixed_args(argv)
    commands = [word for word in arguments.words if "=" not in word]
    arguments.overrides = [word for word in arguments.words if "=" in word]
    arguments.paths = [*commands[1:], *arguments.images] if commands[:1] == ["predict"] else []
    if commands[:1] == ["predict"]:
        commands = commands[:1]
    if len(commands) != 1 or commands[0] not in COMMANDS:
        received = " ".join(commands) or "none"
        parser.error(f"expected one command among {', '.join(COMMANDS)}, and overrides as "
                     f"section.key=value. Received command: {received}")
    arguments.command = commands[0]
    return arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(arguments)
    except KeyboardInterrupt:
        print("\nInterrupted. Finished stages are kept; rerun to continue.", file=sys.stderr)
        return 130
    except UserError as error:
        return _user_error(str(error))
    except Exception as error:
        if not is_disk_full(error):
            raise
        return _user_error(
            f"the disk is full ({error}). Nothing written so far is lost or half-written: "
            f"finished stages and the training backup are kept. Free some space, or point "
            f"runs_dir= and export.models_dir= at a larger disk, and run the same command again "
            f"to continue where it stopped.")


def _user_error(message: str) -> int:
    """Prints a user error as one line; called while handling it, so a bare raise shows it."""
    if os.environ.get("PIPELINE_DEBUG"):
        raise  # noqa: PLE0704  (re-raises the exception being handled)
    print(f"error: {message}", file=sys.stderr)
    print("(set PIPELINE_DEBUG=1 to see the traceback)", file=sys.stderr)
    return 2


def is_disk_full(error: BaseException) -> bool:
    """True for "no space left on device", as Python raises it (OSError, errno ENOSPC) or as
    libraries that write files report it in their own exceptions (h5py, TensorFlow)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _dispatch(arguments: argparse.Namespace) -> int:
    config = load_config(arguments.config, arguments.overrides)
    if arguments.command == "backbones":
        from pipeline.backbones import describe_backbones

        print("\n".join(describe_backbones()))
    elif arguments.command == "predict":
        from pipeline.predict import predict_command

        if not arguments.paths:
            raise ConfigError("predict needs image files or folders: python -m pipeline predict "
                              "--model models/<run> PATH ..., e.g. make predict IMAGES=photos/")
        predict_command(_model_path(arguments, config), [Path(path) for path in arguments.paths],
                        top_k=arguments.top_k, output_format=arguments.format)
    elif arguments.command == "demo":
        from pipeline.demo import serve_demo

        serve_demo(_model_path(arguments, config), port=arguments.port)
    elif arguments.command == "search":
        from pipeline.run import run_search

        run_search(config)
    elif arguments.command == "lr-find":
        from pipeline.run import run_lr_find

        run_lr_find(config)
    else:
        from pipeline.run import run_stages

        stages = tuple(STAGES) if arguments.command == "all" else (arguments.command,)
        run_stages(config, stages, force=arguments.force)
    return 0


def _model_path(arguments: argparse.Namespace, config) -> Path:
    """--model, or the export of the config's run (`<models_dir>/<name>`)."""
    return Path(arguments.model or Path(config.export.models_dir) / config.name)
