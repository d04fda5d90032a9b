// hello-js: a wasi:http/proxy component in JavaScript (componentize-js). Build: isolate build samples/hello-js
//
//   GET  /        a greeting: the module's `greeting` variable (wasi:cli/environment), else "Hello"
//   POST /echo    the request body back, with its content-type
//   GET  /throw   an uncaught exception ("boom from javascript")  -> 500, the error on stderr
//   GET  /loop    an endless loop                                 -> the host's time limit
//   GET  /oom     allocates without bound                         -> the host's memory limit
import { getEnvironment } from "wasi:cli/environment@0.2.10";

const kept = []; // keeps every allocation alive, so /oom really grows the heap

function variable(name) {
  const found = getEnvironment().find(([key]) => key === name);
  return found ? found[1] : undefined;
}

async function handle(request) {
  const path = new URL(request.url).pathname;
  if (path.endsWith("/echo") && request.method === "POST") {
    const type = request.headers.get("content-type") ?? "application/octet-stream";
    return new Response(await request.arrayBuffer(), { headers: { "content-type": type } });
  }
  if (path.endsWith("/throw")) throw new Error("boom from javascript");
  if (path.endsWith("/loop")) for (;;) {}
  // Typed arrays: the engine zeroes them natively, where filling Arrays took ~430 ms of interpreted
  // JavaScript to reach the limit, close to the 1 s timeout on a busy machine.
  if (path.endsWith("/oom")) for (;;) kept.push(new Uint8Array(1 << 20));
  const greeting = variable("greeting") ?? "Hello";
  return new Response(`${greeting} from JavaScript!\n`, { headers: { "content-type": "text/plain; charset=utf-8" } });
}

addEventListener("fetch", (event) => event.respondWith(handle(event.request)));
