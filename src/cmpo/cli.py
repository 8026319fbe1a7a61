"""The ``cmpo`` command line. Each subcommand lives in the module that owns its idea.

A command module exposes ``add_arguments(parser)`` and ``run(args) -> int | None``. Modules are imported
only when their command runs (or its ``--help`` is asked for), so ``cmpo --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "model": ("cmpo.models.cli", "fetch/convert the built-in default model, or show a model's info"),
    "prepare": ("cmpo.data.prepare", "multi-attribute feedback -> λ-conditioned preference pairs"),
    "train": ("cmpo.train.cli", "train SFT, per-attribute cDPO, CMPO, or the SteerLM APM/ACM"),
    "steerlm": ("cmpo.train.steerlm", "SteerLM utilities (relabel data with an APM)"),
    "eval": ("cmpo.eval.cli", "preference accuracy, rank correlation, judge win-rates, steerability, report"),
    "generate": ("cmpo.serve.generate_cli", "generate text from any cmpo model under a steering vector"),
    "export": ("cmpo.serve.export", "fold a fixed steering into a standard Hugging Face checkpoint"),
    "serve": ("cmpo.serve.server", "OpenAI-compatible HTTP server with per-request steering + playground"),
    "demo": ("cmpo.demo.pipeline", "offline end-to-end run that shows steering working"),
}


def _load(name: str):
    module_name, _ = COMMANDS[name]
    return importlib.import_module(module_name)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmpo",
        description="Steerable alignment with Conditional Multiobjective Preference Optimization.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            _load(name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.version:
        from cmpo import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose + 1, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    rc = _load(args.command).run(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
