"""mkdocs hook: docstrings name other objects with Sphinx roles (``:class:`~stitch.training.Run```), which
mkdocstrings passes through as text; on the built page each becomes plain code with the name a reader
knows (``~`` keeps the last part, as Sphinx does)."""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:class|func|mod|meth|attr|data|exc|obj):<code>(~?)([\w.]+)(\(\))?</code>")


def on_page_content(html: str, **kwargs) -> str:
    return ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>", html)
