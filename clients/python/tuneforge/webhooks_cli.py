"""`tuneforge webhooks ...`: the caller's own webhook signing secret, over REST
`/v1/webhook-secret`.

    tuneforge webhooks secret          # the secret that signs your jobs' notifications
    tuneforge webhooks rotate-secret   # a new one; the old stops signing within seconds

They act for the tenant of the API key (`--api-key`, or $TUNEFORGE_API_KEY) and talk
REST to `--rest` (or $TUNEFORGE_REST_URL, default http://127.0.0.1:8000).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TextIO

from tuneforge.display import print_json
from tuneforge.keys_cli import rest_call


def add_commands(
    groups: Any,  # argparse's private _SubParsersAction
    common: argparse.ArgumentParser,
) -> None:
    webhooks = groups.add_parser("webhooks", help="your webhook signing secret")
    commands = webhooks.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[..., int], help: str) -> None:
        sub = commands.add_parser(
            name, help=help, description=help, parents=[common], allow_abbrev=False
        )
        sub.set_defaults(handler=handler, rest_command=True)

    command("secret", cmd_secret, "print the secret that signs your jobs' notifications")
    command("rotate-secret", cmd_rotate, "replace it; the old one stops signing within seconds")


def _call(args: argparse.Namespace, method: str, path: str) -> Any:
    return rest_call(args, method, path, args.api_key)


def _show(secret: dict[str, Any], args: argparse.Namespace, out: TextIO) -> int:
    if args.output == "json":
        print_json(secret, out)
        return 0
    out.write(f"{secret['secret']}\n")
    rotated = secret["rotatedAt"] or "never"
    out.write(
        f"# tenant {secret['tenant']}, generation {secret['generation']} (rotated: {rotated}); "
        "verify X-Tuneforge-Signature with it\n"
    )
    return 0


def cmd_secret(args: argparse.Namespace, out: TextIO) -> int:
    return _show(_call(args, "GET", "/v1/webhook-secret"), args, out)


def cmd_rotate(args: argparse.Namespace, out: TextIO) -> int:
    return _show(_call(args, "POST", "/v1/webhook-secret/rotate"), args, out)
