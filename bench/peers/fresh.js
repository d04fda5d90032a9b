// workerd_fresh_instance: the same .wasm as isolate, a fresh WebAssembly.Instance per request, and the
// same ABI v1 host side as isolate (msgpack request in, msgpack response out, checked and relayed).
// config.capnp binds guest.wasm to the C hello sample (workerd_fresh_instance) or the WAT guest (…_wat).
import wasm from "./guest.wasm";

const utf8 = new TextEncoder();
const text = new TextDecoder();

class Writer {
  constructor() { this.buf = new Uint8Array(256); this.len = 0; }
  reserve(n) {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }
  byte(b) { this.reserve(1); this.buf[this.len++] = b; }
  be(v, n) { for (let i = n - 1; i >= 0; i--) this.byte((v >>> (8 * i)) & 0xff); }
  raw(bytes) { this.reserve(bytes.length); this.buf.set(bytes, this.len); this.len += bytes.length; }
  str(s) {
    const b = utf8.encode(s);
    if (b.length < 32) this.byte(0xa0 | b.length);
    else if (b.length < 0x100) { this.byte(0xd9); this.be(b.length, 1); }
    else if (b.length < 0x10000) { this.byte(0xda); this.be(b.length, 2); }
    else { this.byte(0xdb); this.be(b.length, 4); }
    this.raw(b);
  }
  bin(b) {
    if (b.length < 0x100) { this.byte(0xc4); this.be(b.length, 1); }
    else if (b.length < 0x10000) { this.byte(0xc5); this.be(b.length, 2); }
    else { this.byte(0xc6); this.be(b.length, 4); }
    this.raw(b);
  }
  array(n) { if (n < 16) this.byte(0x90 | n); else { this.byte(0xdc); this.be(n, 2); } }
  map(n) { if (n < 16) this.byte(0x80 | n); else { this.byte(0xde); this.be(n, 2); } }
}

class Reader {
  constructor(bytes) { this.b = bytes; this.p = 0; }
  byte() { return this.b[this.p++]; }
  uint(n) { let v = 0; for (let i = 0; i < n; i++) v = v * 256 + this.byte(); return v; }
  value() {
    const t = this.byte();
    if (t <= 0x7f) return t;
    if ((t & 0xf0) === 0x80) return this.mapOf(t & 0x0f);
    if ((t & 0xf0) === 0x90) return this.arrayOf(t & 0x0f);
    if ((t & 0xe0) === 0xa0) return this.strOf(t & 0x1f);
    switch (t) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return this.binOf(this.uint(1));
      case 0xc5: return this.binOf(this.uint(2));
      case 0xc6: return this.binOf(this.uint(4));
      case 0xcc: return this.uint(1);
      case 0xcd: return this.uint(2);
      case 0xce: return this.uint(4);
      case 0xd9: return this.strOf(this.uint(1));
      case 0xda: return this.strOf(this.uint(2));
      case 0xdb: return this.strOf(this.uint(4));
      case 0xdc: return this.arrayOf(this.uint(2));
      case 0xde: return this.mapOf(this.uint(2));
    }
    throw new Error("unsupported msgpack type " + t);
  }
  strOf(n) { const s = text.decode(this.b.subarray(this.p, this.p + n)); this.p += n; return s; }
  binOf(n) { const s = this.b.slice(this.p, this.p + n); this.p += n; return s; }
  arrayOf(n) { const a = []; for (let i = 0; i < n; i++) a.push(this.value()); return a; }
  mapOf(n) { const m = {}; for (let i = 0; i < n; i++) { const k = this.value(); m[k] = this.value(); } return m; }
}

const BAD_VALUE = /[\x00-\x08\x0a-\x1f\x7f]/;

function diagnostic(status, error, detail) {
  return new Response(JSON.stringify({ error, detail }), { status, headers: { "content-type": "application/json" } });
}

export default {
  async fetch(request) {
    const url = new URL(request.url);
    const body = new Uint8Array(await request.arrayBuffer());
    const w = new Writer();
    w.map(10);
    w.str("method"); w.str(request.method);
    w.str("path"); w.str(url.pathname);
    w.str("query"); w.str(url.search.slice(1));
    const headers = [...request.headers];
    w.str("headers"); w.array(headers.length);
    for (const [k, v] of headers) { w.byte(0x92); w.str(k); w.str(v); }
    w.str("body"); w.bin(body);
    w.str("params"); w.map(0);
    w.str("vars"); w.map(0);
    w.str("region"); w.str("local");
    w.str("client_region"); w.str("local");
    w.str("request_id"); w.str(request.headers.get("x-request-id") || crypto.randomUUID());
    const envelope = w.buf.subarray(0, w.len);

    // The SDKs' allocators import isolate.out_of_memory (guest-sdk/ABI.md: it reports a failed grow; the
    // guest traps after it).
    const instance = new WebAssembly.Instance(wasm, { isolate: { log() {}, out_of_memory() { throw new Error("out of memory"); } } });
    const { memory, isolate_alloc, isolate_handle, _initialize } = instance.exports;
    if (_initialize) _initialize(); // a WASI reactor (the C SDK) runs its constructors first, as isolate does
    const ptr = isolate_alloc(envelope.length) >>> 0;
    if (ptr + envelope.length > memory.buffer.byteLength) return diagnostic(502, "abi", "bad allocation");
    new Uint8Array(memory.buffer, ptr, envelope.length).set(envelope);
    const packed = BigInt.asUintN(64, isolate_handle(ptr, envelope.length));
    const rptr = Number(packed >> 32n), rlen = Number(packed & 0xffffffffn);
    if (rlen === 0 || rptr + rlen > memory.buffer.byteLength) return diagnostic(502, "abi", "bad response pointer");
    const res = new Reader(new Uint8Array(memory.buffer, rptr, rlen)).value();
    if (!Number.isInteger(res.status) || res.status < 100 || res.status > 599) return diagnostic(502, "abi", "bad status");
    const out = new Headers();
    for (const [k, v] of res.headers || []) {
      if (BAD_VALUE.test(v)) return diagnostic(502, "abi", "bad header");
      out.append(k, v);
    }
    return new Response(res.body, { status: res.status, headers: out });
  },
};
