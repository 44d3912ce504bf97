"""The feature dashboard (`sparsecode serve RUN`): browse RUN/features.sqlite in a web page.

Browsing imports only sqlite3, FastAPI and Jinja2; "what fires here?" loads torch and the model lazily.
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
