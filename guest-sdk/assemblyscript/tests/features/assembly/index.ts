// AssemblyScript SDK API test guest, driven by tests/test_sdks.py and tests/test_guest_io.py.
import {
  Request, Response, serve, log, WARN, cache, fetch, FetchRequest, FetchError, kv, jsonQuote,
} from "../../../assembly/index";
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

/** A required query parameter ("" when absent). */
function arg(req: Request, name: string): string {
  const value = req.queryParam(name);
  return value != null ? value : "";
}

function bytesOf(s: string): Uint8Array {
  return Uint8Array.wrap(String.UTF8.encode(s));
}

/** An outbound HTTP or key-value failure: "<code> <name>". */
function failure(status: i32, code: i32, name: string, suffix: string = ""): Response {
  return new Response(status).setText(code.toString() + " " + name + suffix);
}

function fetchOne(req: Request): Response {
  const method = req.queryParam("method"); // default: the incoming request's method
  const out = new FetchRequest(method != null ? method : req.method, arg(req, "url")).header("x-probe", "features");
  if (req.body.length > 0) out.setBody(req.body);
  if (req.queryParam("redirects") != null) out.redirects(I32.parseInt(arg(req, "redirects")));
  if (req.queryParam("timeout_ms") != null) out.timeout(I32.parseInt(arg(req, "timeout_ms")));
  const result = fetch(out);
  const res = result.response;
  if (res == null) return failure(502, result.error, result.errorName);
  const origin = res.header("X-Origin");
  return new Response(200)
    .header("x-fetch-status", res.status.toString())
    .header("x-fetch-url", res.url)
    .header("x-fetch-origin", origin != null ? origin : "none")
    .setBody(res.body);
}

function fetchMany(req: Request): Response {
  const url = arg(req, "url");
  const n = I32.parseInt(arg(req, "n"));
  for (let i = 0; i < n; i++) {
    const result = fetch(FetchRequest.get(url));
    if (!result.ok) return failure(502, result.error, FetchError.nameOf(result.error), " after " + i.toString());
  }
  return new Response(200).setText("ok " + n.toString());
}

function kvError(code: i32, suffix: string = ""): Response {
  return failure(500, code, kv.errorName(code), suffix);
}

function kvDone(code: i32): Response {
  return code < 0 ? kvError(code) : new Response(200).setText("ok");
}

function kvRoute(req: Request): Response {
  const store = kv.open(arg(req, "store"));
  if (store < 0) return kvError(store);
  const key = arg(req, "key");
  if (req.path == "/kv/set") return kvDone(kv.set(store, key, req.body));
  if (req.path == "/kv/get") {
    const value = kv.get(store, key);
    if (value != null) return new Response(200).setBody(value);
    return kv.lastError == kv.NOT_FOUND ? failure(404, kv.lastError, kv.errorName(kv.lastError)) : kvError(kv.lastError);
  }
  if (req.path == "/kv/delete") return kvDone(kv.delete(store, key));
  if (req.path == "/kv/exists") {
    const found = kv.exists(store, key);
    return found < 0 ? kvError(found) : new Response(200).setText(found.toString());
  }
  if (req.path == "/kv/list") {
    const cursor = req.queryParam("cursor");
    const page = kv.list(store, arg(req, "prefix"), cursor != null ? bytesOf(cursor) : null);
    if (page == null) return kvError(kv.lastError);
    const res = new Response(200).setText(page.strings().join("\n"));
    const next = page.cursorString();
    if (next != null) res.header("x-cursor", next);
    return res;
  }
  if (req.path == "/kv/big") {
    const size = I32.parseInt(arg(req, "size"));
    const value = new Uint8Array(size);
    value.fill(0x78); // 'x'
    return kvDone(kv.set(store, key, value));
  }
  if (req.path == "/kv/long-key") {
    const long = new Uint8Array(kv.MAX_KEY + 1);
    long.fill(0x6b); // 'k'
    const value = kv.get(store, long);
    return value != null ? new Response(200).setBody(value) : kvError(kv.lastError);
  }
  if (req.path == "/kv/count") {
    const n = I32.parseInt(arg(req, "n"));
    for (let i = 0; i < n; i++) {
      const found = kv.exists(store, "k");
      if (found < 0) return kvError(found, " after " + i.toString());
    }
    return new Response(200).setText("ok " + n.toString());
  }
  return new Response(404).setText("unknown");
}

function handle(req: Request): Response {
  if (req.path == "/fetch") return fetchOne(req);
  if (req.path == "/fetch-many") return fetchMany(req);
  if (req.path.startsWith("/kv/")) return kvRoute(req);
  if (req.path == "/secret") {
    const value = req.var(arg(req, "name"));
    return value != null ? new Response(200).setText(value) : new Response(404).setText("missing");
  }
  if (req.path == "/query") {
    const value = req.queryParam(arg(req, "name"));
    return value != null ? new Response(200).setText(value) : new Response(404).setText("missing");
  }
  if (req.path == "/json") return Response.json(201, '{"echo":' + jsonQuote(arg(req, "q")) + "}");
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
