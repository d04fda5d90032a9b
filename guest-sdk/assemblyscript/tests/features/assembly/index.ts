// AssemblyScript SDK API test guest, driven by tests/test_sdks.py.
import { Request, Response, serve, log, WARN, cache } from "../../../assembly/index";
export { isolate_abi_v1, isolate_alloc } from "../../../assembly/index";

export function isolate_handle(ptr: usize, len: usize): u64 {
  return serve(ptr, len, handle);
}

function text(value: string | null): Response {
  return new Response(200).setText(value != null ? value : "missing");
}

/** A cache failure: 500 with "<code>: <message>". */
function cacheError(code: i32): Response {
  return new Response(500).setText(code.toString() + ": " + cache.errorMessage(code));
}

/** A visit counter that outlives the request: each request runs in a fresh isolate. */
function visits(): Response {
  const stored = cache.getString("visits");
  const count = (stored != null ? I64.parseInt(stored) : 0) + 1;
  const code = cache.put("visits", count.toString(), 60_000);
  return code < 0 ? cacheError(code) : new Response(200).setText(count.toString());
}

function handle(req: Request): Response {
  if (req.path == "/visits") return visits();
  if (req.path == "/cache/put") {
    const code = cache.put("blob", req.body, 60_000);
    return code < 0 ? cacheError(code) : new Response(204);
  }
  if (req.path == "/cache/get") {
    const value = cache.get("blob");
    return value != null ? new Response(200).setBody(value) : new Response(404).setText("missing");
  }
  if (req.path == "/cache/bad-ttl") return cacheError(cache.put("k", "v", 0));
  if (req.path == "/cache/bad-key") return cacheError(cache.put("", "v", 60_000));
  if (req.path == "/cache/long-key") {
    cache.get(new Uint8Array(cache.MAX_KEY + 1)); // throws: a bad key traps
    return new Response(200);
  }
  if (req.path == "/header") return text(req.header("X-Mixed-Case"));
  if (req.path == "/param") return text(req.param("id"));
  if (req.path == "/var") return text(req.variable("k"));
  if (req.path == "/log") {
    log(WARN, "feature log");
    return new Response(204);
  }
  if (req.path == "/fail") return Response.text("feature failure", 404);
  if (req.path == "/crash") throw new Error("feature panic");
  return new Response(404).setText("unknown");
}
