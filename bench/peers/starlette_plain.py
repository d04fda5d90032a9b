"""starlette_plain: a plain Starlette endpoint under the same uvicorn settings as isolate's edge.

It answers what the C hello sample (samples/hello) answers for GET /hello on a node of region "local".
"""

from __future__ import annotations

import argparse
import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from isolate.http import bind, uvicorn_server


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("Hello, world! (from C, region local, client in local)\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = Starlette(routes=[Route("/hello", hello)])
    sock = bind("127.0.0.1", args.port)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(uvicorn_server(app, "127.0.0.1", args.port).serve(sockets=[sock]))


if __name__ == "__main__":
    main()
