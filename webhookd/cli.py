"""Command line: argument parsing and exit codes (0 ok, 1 runtime error, 2 bad usage,
78 config error)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import difflib
import re
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, NoReturn

from webhookd import __version__
from webhookd.client import add_client_commands, add_healthcheck, add_trigger

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78
INVALID_CHOICE_RE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")


class Parser(argparse.ArgumentParser):
    """argparse with a did-you-mean for a mistyped command (Python 3.14 has it built in)."""

    def error(self, message: str) -> NoReturn:
        match = INVALID_CHOICE_RE.search(message)
        if match is not None:
            choices = re.findall(r"'([^']*)'", match.group(2))
            close = difflib.get_close_matches(match.group(1), choices, n=3, cutoff=0.5)
            if close:
                message += f"; did you mean {' or '.join(close)}?"
        super().error(message)


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _config_errors(problems: Sequence[str], prefix: str) -> int:
    for problem in problems:
        print(f"{prefix}{problem}", file=sys.stderr)
    return EXIT_CONFIG


def cmd_serve(args: argparse.Namespace) -> int:
    from webhookd import logs
    from webhookd.config import ConfigError, config_from_mapping, load_config, parse_listen
    from webhookd.daemon import serve

    try:
        config = load_config(args.config)
        if args.listen is not None:
            try:
                parse_listen(args.listen)
            except ValueError as exc:
                reason = f" ({exc})" if str(exc) else ""
                raise ConfigError([f"--listen: expected HOST:PORT or unix:/path{reason}"]) from None
            config = dataclasses.replace(config, listen=args.listen)
            if not config.api_keys and not config.listen_address.is_loopback:
                # The same rule as the file's `listen`, said by the same code.
                config_from_mapping({"listen": args.listen})
    except ConfigError as exc:
        return _config_errors(exc.problems, "webhookd: config error: ")
    logs.setup(config.log.level, config.log.format)
    try:
        return _run(serve(config, args.config, listen=args.listen))
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    from webhookd.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _config_errors(exc.problems, "")
    print(
        f"{args.config}: OK (listen {config.listen}, database {config.database_shown}, "
        f"{len(config.api_keys)} API keys, {len(config.event_types)} event types)"
    )
    return EXIT_OK


def cmd_listen(args: argparse.Namespace) -> int:
    from webhookd.listen import Listener, SecretError, check_public_key, check_secret, run

    try:
        if args.secret is not None:
            check_secret(args.secret, args.scheme)
    except SecretError as exc:
        print(f"webhookd listen: --secret: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.public_key is not None:
            check_public_key(args.public_key, args.scheme)
    except SecretError as exc:
        print(f"webhookd listen: --public-key: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.forward_to is not None and not args.forward_to.startswith(("http://", "https://")):
        print("webhookd listen: --forward-to: expected http(s)://host:port", file=sys.stderr)
        return EXIT_USAGE
    listener = Listener(
        args.secret,
        args.scheme,
        args.status,
        public_key=args.public_key,
        forward_to=args.forward_to,
        out=sys.stdout,
    )
    try:
        return _run(run(args.host, args.port, listener))
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_dev(args: argparse.Namespace) -> int:
    from webhookd.devmode import run

    try:
        return _run(run(args.port, args.database))
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_backup(args: argparse.Namespace) -> int:
    from webhookd.backup import BackupError, backup
    from webhookd.config import ConfigError, load_config

    try:
        database = load_config(args.config).database
    except ConfigError as exc:
        return _config_errors(exc.problems, "webhookd: config error: ")
    try:
        size = backup(database, args.dest, force=args.force)
    except BackupError as exc:
        print(f"webhookd backup: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"backed up {database} to {args.dest} ({size} bytes, mode 0600)")
    return EXIT_OK


def _add_daemon_commands(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the daemon")
    p.add_argument("-c", "--config", help="YAML config file (default: built-in defaults)")
    p.add_argument(
        "--listen", metavar="HOST:PORT", help="listen here instead of the config's `listen`"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check-config", help="validate a config file and exit (0 ok, 78 bad)")
    p.add_argument("-c", "--config", required=True, help="YAML config file")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser(
        "backup", help="an online, consistent copy of the SQLite database (mode 0600)"
    )
    p.add_argument("-c", "--config", help="the daemon's config file (default: built-in defaults)")
    p.add_argument("dest", metavar="DEST", help="the backup file to write")
    p.add_argument("--force", action="store_true", help="replace DEST if it exists")
    p.set_defaults(func=cmd_backup)


def _add_development_commands(sub: Any) -> None:
    p = sub.add_parser("listen", help="a local receiver for development that prints deliveries")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9000, help="port (default 9000)")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--secret", help="the endpoint's secret: requests that do not verify get 401")
    key.add_argument(
        "--public-key",
        metavar="whpk_…",
        help="the Ed25519 endpoint's public key: requests whose v1a signature does not "
        "verify get 401",
    )
    p.add_argument(
        "--scheme",
        choices=("standard", "hmac-sha256", "hmac-sha256-timestamped", "token"),
        default="standard",
        help="the endpoint's signature scheme (default standard)",
    )
    p.add_argument(
        "--status", type=int, default=200, help="HTTP status to answer verified requests (200)"
    )
    p.add_argument(
        "--forward-to",
        metavar="URL",
        help="pass each verified request on to your application there; its answer is the answer",
    )
    p.set_defaults(func=cmd_listen)

    p = sub.add_parser(
        "dev", help="a daemon, a receiver and an endpoint, printing every attempt (Ctrl-C stops)"
    )
    p.add_argument("--port", type=int, default=8080, help="the API's port (default 8080)")
    p.add_argument("--database", help="keep the database in this file (default: a temporary one)")
    p.set_defaults(func=cmd_dev)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="webhookd", description="A self-hosted webhook sender: one process, one SQLite file."
    )
    parser.add_argument("--version", action="version", version=f"webhookd {__version__}")
    # Any: the command modules take argparse's own parser type, of which Parser is one.
    sub: Any = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_daemon_commands(sub)
    _add_development_commands(sub)
    add_trigger(sub)
    add_client_commands(sub)
    add_healthcheck(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
