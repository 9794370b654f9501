"""``imagevault token create|list|revoke``: bearer tokens, audited like every operation."""

from __future__ import annotations

import argparse
import json
from typing import Any

from vault.auth import Role, parse_role
from vault.cli.common import COMMAND_LINE, add_json_option, emit, run_with_vault, say
from vault.config import Config


def cmd_token_create(config: Config, args: argparse.Namespace) -> int:
    role = parse_role(args.role)

    async def work(vault: Any) -> Any:
        return await vault.create_token(
            COMMAND_LINE, args.tenant, role, args.name, args.ttl, args.idle_timeout, on_behalf=args.on_behalf,
        )

    token, info = run_with_vault(config, work)
    if getattr(args, "json", False):
        emit(args, {"token": token, **info.to_json()}, "")
        return 0
    print(token)  # nothing else on stdout: scripts capture it as it is
    tenant = "none (admin)" if info.role is Role.ADMIN else info.tenant
    say(f"token '{info.name}' created: tenant={tenant} role={info.role.value} expires={info.expires_at or 'never'}"
        + (" on-behalf" if info.on_behalf else ""))
    return 0


def cmd_token_list(config: Config, args: argparse.Namespace) -> int:
    async def work(vault: Any) -> Any:
        return await vault.list_tokens(COMMAND_LINE, args.tenant)

    tokens = run_with_vault(config, work)
    if getattr(args, "json", False):
        print(json.dumps([t.to_json() for t in tokens], indent=2))
        return 0
    print(f"{'NAME':24} {'TENANT':16} {'ROLE':10} {'CREATED':22} {'EXPIRES':22} {'ON-BEHALF':10} STATE")
    for t in tokens:
        state = "revoked" if t.revoked_at else "active"
        on_behalf = "yes" if t.on_behalf else "no"
        print(f"{t.name:24} {t.tenant:16} {t.role.value:10} {t.created_at[:19]:22} {(t.expires_at or 'never')[:19]:22} "
              f"{on_behalf:10} {state}")
    return 0


def cmd_token_revoke(config: Config, args: argparse.Namespace) -> int:
    async def work(vault: Any) -> Any:
        return await vault.revoke_token(COMMAND_LINE, args.name)

    revocation = run_with_vault(config, work)
    emit(args, {"name": args.name, "revoked": revocation.count}, f"revoked {revocation.count} token(s) named '{args.name}'")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    token = sub.add_parser("token", help="manage bearer tokens").add_subparsers(dest="token_command", required=True)
    p = token.add_parser("create", parents=[common], help="create a token and print it (once)")
    p.add_argument("--tenant", default=None, help="the tenant (required, except for --role admin, which has none)")
    p.add_argument("--role", required=True, help="clinician, dpo, researcher, operator, auditor or admin")
    p.add_argument("--name", required=True)
    p.add_argument("--ttl", default=None, help="lifetime such as 90d, 12h, or 'never' (default: 90d)")
    p.add_argument("--idle-timeout", default=None, help="for interactive sessions: expire after this long unused (e.g. 30m)")
    p.add_argument("--on-behalf", action="store_true",
                   help="an application token that may name the user it acts for (X-On-Behalf-Of)")
    p.set_defaults(func=cmd_token_create)
    p = token.add_parser("list", parents=[common], help="list tokens (never their values)")
    p.add_argument("--tenant", default=None, help="only this tenant's tokens ('-': the admin tokens)")
    p.set_defaults(func=cmd_token_list)
    p = token.add_parser("revoke", parents=[common], help="revoke the active token(s) with this name")
    p.add_argument("name")
    p.set_defaults(func=cmd_token_revoke)
    for parser in token.choices.values():
        add_json_option(parser)
