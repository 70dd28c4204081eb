"""``cvdeploy tokens ...``: the platform's API tokens (secrets are shown once, never stored)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cvdeploy.cli.output import JsonOption, console, err_console, fail, print_json, when
from cvdeploy.errors import ConfigError, CVDeployError

__all__ = ["tokens_app"]

tokens_app = typer.Typer(
    help="Create, list and revoke the platform's API tokens (state in $CVDEPLOY_HOME).",
    no_args_is_help=True,
)


@tokens_app.command("create")
def create(
    scope: Annotated[
        str, typer.Option(help="'query' (predict only) or 'manage' (also change endpoints).")
    ],
    comment: Annotated[str, typer.Option(help="Who or what the token is for.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Create a token and print its secret; it cannot be shown again."""
    from cvdeploy.platforms.local import PlatformState
    from cvdeploy.platforms.local.tokens import SCOPES, split_secret

    # Picking the element (rather than casting the string) keeps the Literal type honest.
    chosen = next((s for s in SCOPES if s == scope), None)
    if chosen is None:
        raise fail(ConfigError(f"--scope must be 'query' or 'manage', got {scope!r}"))
    try:
        with PlatformState() as state:
            secret = state.create_token(chosen, comment)
    except CVDeployError as exc:
        raise fail(exc) from None
    token_id = split_secret(secret)[0]
    if as_json:
        print_json({"id": token_id, "scope": chosen, "token": secret})
        return
    err_console.print(
        f"created {chosen} token [bold]{token_id}[/]; copy the secret now, "
        "[bold yellow]it cannot be shown again[/] (only its hash is stored):",
        soft_wrap=True,
    )
    sys.stdout.write(secret + "\n")


@tokens_app.command("list")
def list_tokens(
    show_all: Annotated[bool, typer.Option("--all", help="Include revoked tokens.")] = False,
    as_json: JsonOption = False,
) -> None:
    """List tokens: id, scope, comment and creation time (never secrets)."""
    from cvdeploy.platforms.local import PlatformState

    try:
        with PlatformState() as state:
            tokens = [t for t in state.list_tokens() if show_all or t.revoked_at is None]
    except CVDeployError as exc:
        raise fail(exc) from None
    if as_json:
        print_json(
            [
                {
                    "id": t.id,
                    "scope": t.scope,
                    "comment": t.comment,
                    "created_at": t.created_at,
                    "revoked_at": t.revoked_at,
                }
                for t in tokens
            ]
        )
        return
    table = Table(title=f"{len(tokens)} token(s)", title_justify="left")
    for column in ("id", "scope", "comment", "created (UTC)", "revoked (UTC)"):
        table.add_column(column)
    for t in tokens:
        table.add_row(t.id, t.scope, escape(t.comment), when(t.created_at), when(t.revoked_at))
    console.print(table)


@tokens_app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="Token id (`tokens list`).")],
    as_json: JsonOption = False,
) -> None:
    """Revoke token ID at once; requests using it are refused from now on."""
    from cvdeploy.platforms.local import PlatformState

    try:
        with PlatformState() as state:
            state.revoke_token(token_id)
    except CVDeployError as exc:
        raise fail(exc) from None
    if as_json:
        print_json({"id": token_id, "revoked": True})
        return
    console.print(f"revoked token {escape(token_id)}")
