"""Command line: argument parsing and exit codes (0 ok, 1 runtime error, 78 config error)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from webhookd import __version__
from webhookd.client import add_client_commands, add_healthcheck

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 78


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def cmd_serve(args: argparse.Namespace) -> int:
    from webhookd import logs
    from webhookd.config import ConfigError, load_config
    from webhookd.daemon import serve

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"webhookd: config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    logs.setup(config.log.level, config.log.format)
    try:
        return _run(serve(config, args.config))
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    from webhookd.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{problem}", file=sys.stderr)
        return EXIT_CONFIG
    print(
        f"{args.config}: OK (listen {config.listen}, database {config.database}, "
        f"{len(config.api_keys)} API keys, {len(config.event_types)} event types)"
    )
    return EXIT_OK


def cmd_listen(args: argparse.Namespace) -> int:
    from webhookd.listen import run

    try:
        return _run(run(args.host, args.port, args.secret, args.status))
    except KeyboardInterrupt:
        return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="webhookd", description="A self-hosted webhook sender: one process, one SQLite file."
    )
    parser.add_argument("--version", action="version", version=f"webhookd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("serve", help="run the daemon")
    p.add_argument("-c", "--config", help="YAML config file (default: built-in defaults)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check-config", help="validate a config file and exit (0 ok, 78 bad)")
    p.add_argument("-c", "--config", required=True, help="YAML config file")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("listen", help="a local receiver for development that prints deliveries")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9000, help="port (default 9000)")
    p.add_argument("--secret", help="the endpoint's secret, to verify signatures")
    p.add_argument("--status", type=int, default=200, help="HTTP status to answer (default 200)")
    p.set_defaults(func=cmd_listen)

    add_client_commands(sub)
    add_healthcheck(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
