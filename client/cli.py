"""The `contentd` command line."""

from __future__ import annotations

from importlib.metadata import entry_points

import click

#: Entry-point group through which other packages add verbs (the daemon adds `serve`).
COMMAND_GROUP = "contentd.commands"


class _Verbs(click.Group):
    """The CLI's verbs, plus those registered under the `contentd.commands` entry points."""

    def _registered(self) -> dict[str, click.Command]:
        return {ep.name: ep.load() for ep in entry_points(group=COMMAND_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._registered()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or self._registered().get(cmd_name)


@click.group(cls=_Verbs)
def main() -> None:
    """contentd: a content-addressable blob store speaking containerd's Content API."""
