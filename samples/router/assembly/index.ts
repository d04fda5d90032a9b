// router: an AssemblyScript API with route parameters and deployment variables.
//   GET /users           → the user list
//   GET /users/:id       → one user, or 404 JSON
// The variable `site` names the deployment in every answer.
import { Request, Response, serve, log, INFO, jsonQuote } from "isolate-sdk/assembly";
export { isolate_abi_v1, isolate_alloc } from "isolate-sdk/assembly"; // ABI v1 exports, from the entry file

const USERS: string[] = ["ada", "grace", "linus"];

export function isolate_handle(ptr: usize, len: usize): u64 {
  return serve(ptr, len, route);
}

function route(req: Request): Response {
  const site = req.variable("site");
  const siteJson = jsonQuote(site != null ? site : "isolate");
  const id = req.param("id");
  if (id == "boom") throw new Error("asked to fail"); // AssemblyScript's abort: logged, then a trap
  if (id == null) {
    const names = new Array<string>();
    for (let i = 0; i < USERS.length; i++) names.push(jsonQuote(USERS[i]));
    return Response.json('{"site":' + siteJson + ',"users":[' + names.join(",") + "]}");
  }
  const index = I32.parseInt(id);
  if (isNaN<f64>(<f64>index) || index < 0 || index >= USERS.length || index.toString() != id) {
    return Response.json('{"error":"no such user","id":' + jsonQuote(id) + "}", 404);
  }
  log(INFO, "router served user " + id);
  return Response.json('{"site":' + siteJson + ',"id":' + id + ',"name":' + jsonQuote(USERS[index]) +
    ',"region":' + jsonQuote(req.region) + "}");
}
