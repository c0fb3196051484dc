"""`tuneforge keys ...`: the operator's API key commands, over REST `/v1/admin/keys`.

    tuneforge keys create --tenant acme      # prints the key once; the server keeps a hash
    tuneforge keys list
    tuneforge keys revoke KEY_ID

They need the server's admin key (`--admin-key`, or $TUNEFORGE_ADMIN_KEY) and talk REST
to `--rest` (or $TUNEFORGE_REST_URL, default http://127.0.0.1:8000): key administration
has no gRPC method.
"""

from __future__ import annotations

import argparse
import os
import urllib.parse
from collections.abc import Callable
from typing import Any, TextIO

import httpx

from tuneforge.display import print_json
from tuneforge.errors import Unavailable, from_rest
from tuneforge.rest import DEFAULT_URL

KEY_ID_HELP = "the key's id (the part after 'tfk_' and before the next '_')"


def add_commands(
    groups: Any,  # argparse's private _SubParsersAction
    common: argparse.ArgumentParser,
) -> None:
    keys = groups.add_parser("keys", help="API keys (operator: needs the admin key)")
    commands = keys.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[..., int], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help, description=help, parents=[common], allow_abbrev=False
        )
        sub.add_argument(
            "--admin-key",
            default=os.environ.get("TUNEFORGE_ADMIN_KEY"),
            help="the server's TUNEFORGE_ADMIN_KEY (default $TUNEFORGE_ADMIN_KEY)",
        )
        sub.set_defaults(handler=handler, keys_command=True)
        return sub

    command("create", cmd_create, "create a key for a tenant; prints it once").add_argument(
        "--tenant", required=True, help="the tenant the key acts for"
    )
    command("list", cmd_list, "list keys (ids, tenants, revoked; never the keys)")
    revoke = command("revoke", cmd_revoke, "revoke a key; every replica refuses it in seconds")
    revoke.add_argument("key_id", help=KEY_ID_HELP)


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    if not args.admin_key:
        raise SystemExit(
            "tuneforge: key commands need the admin key: --admin-key or $TUNEFORGE_ADMIN_KEY"
        )
    return rest_call(args, method, path, args.admin_key, body)


def rest_call(
    args: argparse.Namespace, method: str, path: str, key: str | None, body: Any = None
) -> Any:
    """One REST call to `--rest` with `key` as the bearer token: its JSON answer, or the
    ApiError for an error answer (Unavailable when the server cannot be reached)."""
    url = (args.rest or DEFAULT_URL).rstrip("/")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.request(
            method, url + path, json=body, headers=headers, timeout=args.timeout
        )
    except httpx.HTTPError as error:
        raise Unavailable(f"cannot reach {url}: {error}") from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code >= 400:
        raise from_rest(response.status_code, answer)
    return answer


def _line(key: dict[str, Any]) -> str:
    state = f"revoked {key['revokedAt']}" if key.get("revoked") else "active"
    return f"{key['keyId']}  tenant={key['tenant']}  created {key['createdAt']}  {state}"


def cmd_create(args: argparse.Namespace, out: TextIO) -> int:
    made = _call(args, "POST", "/v1/admin/keys", {"tenant": args.tenant})
    if args.output == "json":
        print_json(made, out)
        return 0
    out.write(f"{made['key']}\n")
    out.write(
        f"# key id {made['keyId']}, tenant {made['tenant']}: store it now, it is not shown "
        "again (send it as TUNEFORGE_API_KEY / Authorization: Bearer)\n"
    )
    return 0


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    found = _call(args, "GET", "/v1/admin/keys")
    if args.output == "json":
        print_json(found, out)
        return 0
    for key in found["keys"]:
        out.write(_line(key) + "\n")
    return 0


def cmd_revoke(args: argparse.Namespace, out: TextIO) -> int:
    key = _call(args, "POST", f"/v1/admin/keys/{urllib.parse.quote(args.key_id, safe='')}/revoke")
    if args.output == "json":
        print_json(key, out)
        return 0
    out.write(_line(key) + "\n")
    return 0
