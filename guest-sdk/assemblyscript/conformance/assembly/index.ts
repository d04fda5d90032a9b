// The conformance echo guest (contract: ../../../abi/generate.py), written with the public SDK API.
import { Request, Response, serve } from "../../assembly/index";
export { isolate_abi_v1, isolate_alloc } from "../../assembly/index";

export function isolate_handle(ptr: usize, len: usize): u64 {
  return serve(ptr, len, echo);
}

function echo(req: Request): Response {
  const status = req.header("x-status");
  const res = new Response(status != null ? I32.parseInt(status) : 200)
    .header("x-method", req.method)
    .header("x-path", req.path)
    .header("x-query", req.query)
    .header("x-region", req.region)
    .header("x-client-region", req.clientRegion)
    .header("x-request-id", req.requestId);
  for (let i = 0; i < req.params.length; i++) res.header("x-param-" + req.params[i].name, req.params[i].value);
  for (let i = 0; i < req.vars.length; i++) res.header("x-var-" + req.vars[i].name, req.vars[i].value);
  for (let i = 0; i < req.headers.length; i++) res.header("x-echo-" + req.headers[i].name, req.headers[i].value);
  res.header("x-header-count", req.headers.length.toString());
  return res.setBody(req.body);
}
