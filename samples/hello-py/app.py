"""hello-py: a wasi:http/proxy component in Python (componentize-py). Build: isolate build samples/hello-py

    GET  /        a greeting: the module's `greeting` variable (wasi:cli/environment), else "Hello"
    POST /echo    the request body back, with its content-type
    GET  /throw   an uncaught exception ("boom from python")  -> 500, its traceback on stderr
    GET  /loop    an endless loop                             -> the host's time limit
    GET  /oom     allocates without bound                     -> the host's memory limit
"""

import os

from isolate_http import Request, Response, serve

kept: list[bytearray] = []  # keeps every allocation alive, so /oom really grows the heap


def handle(request: Request) -> Response:
    path = request.path.split("?", 1)[0]
    if path.endswith("/echo") and request.method == "POST":
        return Response(200, {"content-type": request.header("content-type", "application/octet-stream") or ""},
                        request.body)
    if path.endswith("/throw"):
        raise RuntimeError("boom from python")
    if path.endswith("/loop"):
        while True:
            pass
    if path.endswith("/oom"):
        while True:
            kept.append(bytearray(1 << 20))
    greeting = os.environ.get("greeting", "Hello")
    return Response(200, {"content-type": "text/plain; charset=utf-8"}, f"{greeting} from Python!\n")


IncomingHandler = serve(handle)
