// isolate-sdk: write edge handlers for the isolate runtime in AssemblyScript (ABI v1, see ../../ABI.md).
//
//   import { Request, Response, serve } from "isolate-sdk/assembly";
//   export { isolate_abi_v1, isolate_alloc } from "isolate-sdk/assembly";
//
//   export function isolate_handle(ptr: usize, len: usize): u64 {
//     return serve(ptr, len, handle);
//   }
//
//   function handle(req: Request): Response {
//     return Response.text("hello\n");
//   }
//
// Build with `isolate build DIR` (asc --runtime stub --use abort=...): each request runs in a fresh
// isolate, so nothing is ever freed and the stub runtime is the fastest choice.

import { Reader, Writer, sameAscii } from "./msgpack";

export { cache } from "./cache";
export { fetch, FetchRequest, FetchResponse, FetchResult, FetchError } from "./http";
export { kv, KvPage } from "./kv";
export { jsonQuote } from "./json";

@external("isolate", "log")
declare function hostLog(level: i32, ptr: usize, len: usize): void;

export const DEBUG: i32 = 0;
export const INFO: i32 = 1;
export const WARN: i32 = 2;
export const ERROR: i32 = 3;

/** Log through the host; kept with the request and tagged with its id. */
export function log(level: i32, message: string): void {
  const bytes = String.UTF8.encode(message);
  hostLog(level, changetype<usize>(bytes), bytes.byteLength);
}

/** Replaces AssemblyScript's `env.abort` import (see the build's --use abort=...): log, then trap. */
export function abort(message: string | null, fileName: string | null, line: u32, column: u32): void {
  const text = (message ? message : "abort") + " at " + (fileName ? fileName : "?") + ":" +
    line.toString() + ":" + column.toString();
  log(ERROR, text);
  unreachable();
}

/** A name/value pair: a header, a route parameter or a variable. */
export class Pair {
  constructor(public name: string, public value: string) {}
}

function find(pairs: Pair[], name: string, ignoreCase: bool): string | null {
  const wanted = ignoreCase ? name.toLowerCase() : name;
  for (let i = 0; i < pairs.length; i++) {
    const key = ignoreCase ? pairs[i].name.toLowerCase() : pairs[i].name;
    if (key == wanted) return pairs[i].value;
  }
  return null;
}

function hexValue(c: i32): i32 {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
  if (c >= 0x41 && c <= 0x46) return c - 0x41 + 10;
  return -1;
}

/** Percent-decode a query component (`+` is a space); a `%` not followed by two hex digits is kept. */
function percentDecode(s: string): string {
  if (s.indexOf("%") < 0 && s.indexOf("+") < 0) return s;
  const raw = String.UTF8.encode(s);
  const n = raw.byteLength;
  const src = changetype<usize>(raw);
  const out = new Uint8Array(n);
  let length = 0;
  for (let i = 0; i < n; i++) {
    let c = <i32>load<u8>(src + <usize>i);
    if (c == 0x2b) c = 0x20;
    else if (c == 0x25 && i + 2 < n) {
      const high = hexValue(<i32>load<u8>(src + <usize>(i + 1)));
      const low = hexValue(<i32>load<u8>(src + <usize>(i + 2)));
      if (high >= 0 && low >= 0) {
        c = (high << 4) | low;
        i += 2;
      }
    }
    out[length++] = <u8>c;
  }
  return String.UTF8.decodeUnsafe(out.dataStart, length);
}

/** An HTTP request as the guest sees it. */
export class Request {
  method: string = "";
  path: string = "";
  /** Without the `?`. */
  query: string = "";
  /** Names lower-case, in request order, duplicates kept. */
  headers: Pair[] = [];
  body: Uint8Array = new Uint8Array(0);
  /** Route parameters such as `:id`. */
  params: Pair[] = [];
  /** The module's deployment variables. */
  vars: Pair[] = [];
  region: string = "";
  clientRegion: string = "";
  requestId: string = "";

  /** The first value of a header (case-insensitive), or null. */
  header(name: string): string | null {
    return find(this.headers, name, true);
  }
  param(name: string): string | null {
    return find(this.params, name, false);
  }
  /** A deployment variable or secret (both arrive in `vars`), or null. */
  var(name: string): string | null {
    return find(this.vars, name, false);
  }
  /** The same as `var` (its older name). */
  variable(name: string): string | null {
    return find(this.vars, name, false);
  }
  /**
   * The first value of the query parameter `name`, percent-decoded with `+` as a space, or null
   * when absent (`?a` or `?a=` give ""). Names are compared after decoding.
   */
  queryParam(name: string): string | null {
    const query = this.query;
    let start = 0;
    while (start <= query.length) {
      let end = query.indexOf("&", start);
      if (end < 0) end = query.length;
      if (end > start) {
        const eq = query.indexOf("=", start);
        const hasValue = eq >= 0 && eq < end;
        const key = percentDecode(query.substring(start, hasValue ? eq : end));
        if (key == name) return hasValue ? percentDecode(query.substring(eq + 1, end)) : "";
      }
      start = end + 1;
    }
    return null;
  }
  /** The body decoded as UTF-8. */
  text(): string {
    return String.UTF8.decodeUnsafe(this.body.dataStart, this.body.length);
  }
}

/** What the handler answers. Header names and values must not contain CR, LF or NUL. */
export class Response {
  headers: Pair[] = [];
  body: Uint8Array = new Uint8Array(0);

  constructor(public status: i32 = 200) {}

  static text(text: string, status: i32 = 200): Response {
    return new Response(status).header("content-type", "text/plain; charset=utf-8").setText(text);
  }

  /**
   * A `content-type: application/json` response from JSON text: `Response.json(text, status = 200)`,
   * or `Response.json(status, text)` as in the C SDK (`jsonQuote` makes string literals).
   */
  static json<A, B = i32>(a: A, b: B = <B>200): Response {
    let status: i32 = 200;
    let json = "";
    if (isString<A>() && isInteger<B>()) {
      json = changetype<string>(a);
      status = <i32>b;
    } else if (isInteger<A>() && isString<B>()) {
      status = <i32>a;
      json = changetype<string>(b);
    } else ERROR("Response.json takes (text: string, status: i32 = 200) or (status: i32, text: string)");
    return new Response(status).header("content-type", "application/json").setText(json);
  }

  header(name: string, value: string): Response {
    this.headers.push(new Pair(name, value));
    return this;
  }

  setBody(body: Uint8Array): Response {
    this.body = body;
    return this;
  }

  setText(text: string): Response {
    this.body = Uint8Array.wrap(String.UTF8.encode(text));
    return this;
  }
}

export function isolate_abi_v1(): void {}

export function isolate_alloc(size: usize): usize {
  return heap.alloc(size > 0 ? size : 1);
}

function decodeRequest(ptr: usize, len: usize): Request {
  const r = new Reader(ptr, len);
  const req = new Request();
  const fields = r.mapLength();
  for (let i: u32 = 0; i < fields; i++) {
    // Keys are matched in place (sameAscii), not decoded into strings: ten keys a request.
    const key = r.rawKey();
    const n = r.lastKeyLength();
    if (sameAscii(key, n, "method")) req.method = r.string();
    else if (sameAscii(key, n, "path")) req.path = r.string();
    else if (sameAscii(key, n, "query")) req.query = r.string();
    else if (sameAscii(key, n, "headers")) req.headers = r.pairs(false);
    else if (sameAscii(key, n, "body")) req.body = r.bytes();
    else if (sameAscii(key, n, "params")) req.params = r.pairs(true);
    else if (sameAscii(key, n, "vars")) req.vars = r.pairs(true);
    else if (sameAscii(key, n, "region")) req.region = r.string();
    else if (sameAscii(key, n, "client_region")) req.clientRegion = r.string();
    else if (sameAscii(key, n, "request_id")) req.requestId = r.string();
    else r.skip(0); // unknown keys are ignored, as ABI.md requires
  }
  return req;
}

function encodeResponse(res: Response): u64 {
  const w = new Writer(64 + res.body.length);
  w.byte(0x83);
  w.string("status");
  w.uint(<u32>res.status);
  w.string("headers");
  w.arrayLength(res.headers.length);
  for (let i = 0; i < res.headers.length; i++) {
    w.byte(0x92);
    w.string(res.headers[i].name);
    w.string(res.headers[i].value);
  }
  w.string("body");
  w.bin(res.body);
  return (<u64>w.pointer() << 32) | <u64>w.length;
}

/** Decode the request at (ptr, len), run `handler`, and return the ABI v1 (ptr << 32 | len) result. */
export function serve(ptr: usize, len: usize, handler: (req: Request) => Response): u64 {
  return encodeResponse(handler(decodeRequest(ptr, len)));
}
