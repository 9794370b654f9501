"""The web console's static files (``static/``), served by the daemon at ``/console/``.

Plain HTML, CSS and JavaScript modules: no build step, nothing fetched from elsewhere. The page
calls the same HTTP API as any client, authenticated by a console session
(vault/api/sessions.py).
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
INDEX_PAGE = STATIC_DIR / "index.html"
