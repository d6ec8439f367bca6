"""Print the error reference page (docs/errors.md)."""

from ._doc import render_markdown

print(render_markdown(), end="")
