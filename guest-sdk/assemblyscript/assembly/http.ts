// Outbound HTTP of ABI v1 (see ../../ABI.md, "Outbound HTTP"); exported by index.ts.
//
// The host functions are imported only by a module that calls `fetch`: asc drops unused imports.

import { Pair } from "./index";
import { Reader, Writer } from "./msgpack";

@external("isolate", "http_send")
declare function hostHttpSend(req: usize, reqLen: usize): i32;
@external("isolate", "http_take")
declare function hostHttpTake(out: usize, outCap: usize): i32;

/** The error codes of `fetch` (ABI.md, "Outbound HTTP"), with their names and messages. */
export namespace FetchError {
  /** The request is not valid (URL, method, headers, redirects, timeout). */
  export const BAD_REQUEST: i32 = -1;
  /** The URL's scheme, host or port is not in the module's `allowed_hosts`. */
  export const DENIED: i32 = -2;
  /** The host resolves to a loopback, private, link-local or metadata address. */
  export const BLOCKED_ADDRESS: i32 = -3;
  /** The module's `outbound_requests` calls were already made for this request. */
  export const TOO_MANY_REQUESTS: i32 = -4;
  /** The name does not resolve, or the connection or TLS handshake failed. */
  export const UNREACHABLE: i32 = -5;
  /** The call's timeout passed before the whole answer arrived. */
  export const TIMEOUT: i32 = -6;
  /** The answer's body exceeds the module's `outbound_response_size`. */
  export const TOO_LARGE: i32 = -7;
  /** The origin's answer is not valid HTTP/1.1. */
  export const PROTOCOL: i32 = -8;
  /** More redirects than the request allowed. */
  export const TOO_MANY_REDIRECTS: i32 = -9;

  /** The ABI name of a code: "denied", "timeout", ...; "unknown" for any other code. */
  export function nameOf(code: i32): string {
    switch (code) {
      case BAD_REQUEST: return "bad_request";
      case DENIED: return "denied";
      case BLOCKED_ADDRESS: return "blocked_address";
      case TOO_MANY_REQUESTS: return "too_many_requests";
      case UNREACHABLE: return "unreachable";
      case TIMEOUT: return "timeout";
      case TOO_LARGE: return "too_large";
      case PROTOCOL: return "protocol";
      case TOO_MANY_REDIRECTS: return "too_many_redirects";
      default: return "unknown";
    }
  }

  /** A short description of a code. */
  export function message(code: i32): string {
    switch (code) {
      case BAD_REQUEST: return "the outbound request is not valid";
      case DENIED: return "the URL is not in the module's allowed hosts";
      case BLOCKED_ADDRESS: return "the host resolves to a blocked (private or local) address";
      case TOO_MANY_REQUESTS: return "too many outbound requests for this request";
      case UNREACHABLE: return "the origin is unreachable";
      case TIMEOUT: return "the outbound request timed out";
      case TOO_LARGE: return "the origin's answer is too large";
      case PROTOCOL: return "the origin's answer is not valid HTTP/1.1";
      case TOO_MANY_REDIRECTS: return "too many redirects";
      default: return "unknown fetch error " + code.toString();
    }
  }
}

/** One outbound request: `FetchRequest.get(url)` or `new FetchRequest(method, url)`, then the builders. */
export class FetchRequest {
  headers: Pair[] = [];
  body: Uint8Array | null = null;
  /** Redirects to follow, 0 to 10; with 0 a 3xx answer is returned as it is. */
  maxRedirects: i32 = 0;
  /** This call's timeout in ms; 0 means the module's `outbound_timeout`. */
  timeoutMs: i32 = 0;

  constructor(public method: string, public url: string) {}

  static get(url: string): FetchRequest {
    return new FetchRequest("GET", url);
  }

  /** Add a header (duplicates are kept, in order). */
  header(name: string, value: string): FetchRequest {
    this.headers.push(new Pair(name, value));
    return this;
  }

  /** The body: a string (sent as UTF-8) or a Uint8Array. */
  setBody<T>(body: T): FetchRequest {
    if (isString<T>()) this.body = Uint8Array.wrap(String.UTF8.encode(changetype<string>(body)));
    else if (isReference<T>() && body instanceof Uint8Array) this.body = changetype<Uint8Array>(body);
    else ERROR("a fetch body is a string or a Uint8Array");
    return this;
  }

  redirects(n: i32): FetchRequest {
    this.maxRedirects = n;
    return this;
  }

  timeout(ms: i32): FetchRequest {
    this.timeoutMs = ms;
    return this;
  }
}

/** The origin's answer. */
export class FetchResponse {
  status: i32 = 0;
  /** Names lower-case, in the origin's order, duplicates kept. */
  headers: Pair[] = [];
  /** As sent (de-chunked, never decompressed). */
  body: Uint8Array = new Uint8Array(0);
  /** The URL that answered, after redirects. */
  url: string = "";

  /** The first value of a header (case-insensitive), or null. */
  header(name: string): string | null {
    const wanted = name.toLowerCase();
    for (let i = 0; i < this.headers.length; i++) {
      if (this.headers[i].name.toLowerCase() == wanted) return this.headers[i].value;
    }
    return null;
  }

  /** The body decoded as UTF-8. */
  text(): string {
    return String.UTF8.decodeUnsafe(this.body.dataStart, this.body.length);
  }
}

/** What `fetch` returns: a response, or a negative `FetchError` code (AssemblyScript has no catch). */
export class FetchResult {
  constructor(public error: i32, public response: FetchResponse | null) {}

  get ok(): bool {
    return this.response != null;
  }

  /** "denied", "timeout", ...; "ok" on success. */
  get errorName(): string {
    return this.error == 0 ? "ok" : FetchError.nameOf(this.error);
  }

  get errorMessage(): string {
    return this.error == 0 ? "ok" : FetchError.message(this.error);
  }
}

function encodeFetchRequest(req: FetchRequest): Writer {
  const body = req.body;
  const w = new Writer(64 + req.url.length + (body != null ? body.length : 0));
  w.mapLength(6);
  w.string("url");
  w.string(req.url);
  w.string("method");
  w.string(req.method);
  w.string("headers");
  w.arrayLength(req.headers.length);
  for (let i = 0; i < req.headers.length; i++) {
    w.arrayLength(2);
    w.string(req.headers[i].name);
    w.string(req.headers[i].value);
  }
  w.string("body");
  if (body != null) w.bin(body);
  else w.nil();
  w.string("redirects");
  w.int(req.maxRedirects);
  w.string("timeout_ms");
  w.int(req.timeoutMs);
  return w;
}

function decodeFetchResponse(data: Uint8Array): FetchResponse {
  const r = new Reader(data.dataStart, data.length);
  const res = new FetchResponse();
  const fields = r.mapLength();
  for (let i: u32 = 0; i < fields; i++) {
    const key = r.string();
    if (key == "status") res.status = <i32>r.integer();
    else if (key == "headers") res.headers = r.pairs(false);
    else if (key == "body") res.body = r.bytes();
    else if (key == "url") res.url = r.string();
    else r.skip(0);
  }
  return res;
}

/**
 * Send one outbound request and wait for the whole answer. The module's `allowed_hosts` must name
 * the URL's origin. Returns a `FetchResult`: `.ok` and `.response`, or `.error` (a negative
 * `FetchError` code) and `.errorName`.
 */
export function fetch(req: FetchRequest): FetchResult {
  const envelope = encodeFetchRequest(req);
  const n = hostHttpSend(envelope.pointer(), <usize>envelope.length);
  if (n < 0) return new FetchResult(n, null);
  const out = new Uint8Array(n);
  const taken = hostHttpTake(out.dataStart, <usize>n);
  if (taken != n) throw new Error("http_take returned " + taken.toString() + ", expected " + n.toString());
  return new FetchResult(0, decodeFetchResponse(out));
}
