"""The HTTP side: edge and admin apps, metrics, the admin token, and the two-listener server."""

from ._admin import build_admin_app
from ._auth import (
    cluster_secret_path,
    load_or_create_cluster_secret,
    load_or_create_secret,
    load_or_create_token,
    token_path,
    write_secret,
)
from ._edge import EdgeApp
from ._server import Apps, bind, build, run, serve_apps, uvicorn_server

__all__ = ["Apps", "EdgeApp", "bind", "build", "build_admin_app", "cluster_secret_path",
           "load_or_create_cluster_secret", "load_or_create_secret", "load_or_create_token", "run", "serve_apps",
           "token_path", "uvicorn_server", "write_secret"]
