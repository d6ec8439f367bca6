"""The `contentd` command line."""

from __future__ import annotations

import click


@click.group()
def main() -> None:
    """contentd: a content-addressable blob store speaking containerd's Content API."""


@main.command()
def serve() -> None:
    """Serve the store over gRPC."""
    raise click.ClickException("the daemon is not available yet")
