"""The HTTP side: edge and admin apps, metrics, the admin token, and the two-listener server."""

from ._admin import build_admin_app
from ._auth import load_or_create_token, token_path
from ._edge import EdgeApp
from ._server import Apps, bind, build, run, serve_apps, uvicorn_server

__all__ = ["Apps", "EdgeApp", "bind", "build", "build_admin_app", "load_or_create_token", "run",
           "serve_apps", "token_path", "uvicorn_server"]
