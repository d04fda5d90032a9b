// AssemblyScript SDK API test guest, driven by tests/test_sdks.py.
import { Request, Response, serve, log, WARN } from "../../../assembly/index";
export { isolate_abi_v1, isolate_alloc } from "../../../assembly/index";

export function isolate_handle(ptr: usize, len: usize): u64 {
  return serve(ptr, len, handle);
}

function text(value: string | null): Response {
  return new Response(200).setText(value != null ? value : "missing");
}

function handle(req: Request): Response {
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
