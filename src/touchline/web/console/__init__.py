"""The console: web pages for the people who run a workspace.

Server-rendered with Jinja2 (autoescaped), styled and scripted by the small
hand-written files in ``static/``, charts drawn as SVG on the server. Mounted
at ``/console`` by :func:`mount`; see ``docs/how-to/console.md``.
"""

from __future__ import annotations

from touchline.web.console.app import mount

__all__ = ["mount"]
