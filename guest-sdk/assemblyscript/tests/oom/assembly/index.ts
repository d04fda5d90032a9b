// Out-of-memory test guest for the AssemblyScript SDK, driven by tests/test_sdk_oom.py.
import { Request, Response, serve } from "../../../assembly/index";
export { isolate_abi_v1, isolate_alloc } from "../../../assembly/index";

export function isolate_handle(ptr: usize, len: usize): u64 {
  return serve(ptr, len, handle);
}

function handle(req: Request): Response {
  // The stub runtime cannot grow memory by 512 MiB under the limit: it traps.
  if (req.path == "/alloc") return new Response(200).setBody(new Uint8Array(1 << 29));
  return new Response(200);
}
