// The msgpack subset of ABI v1: read the request map, write the response in shortest forms; also the
// outbound HTTP envelopes and key-value pages (http.ts, kv.ts).
import { Pair } from "./index";

/** Whether `len` bytes at `ptr` are the ASCII string `name` (read as UTF-16 code units, no call per char). */
export function sameAscii(ptr: usize, len: u32, name: string): bool {
  if (<u32>name.length != len) return false;
  const chars = changetype<usize>(name);
  for (let i: usize = 0; i < <usize>len; i++) {
    if (<u16>load<u8>(ptr + i) != load<u16>(chars + (i << 1))) return false;
  }
  return true;
}

export class Reader {
  constructor(private pos: usize, private len: usize) {
    this.end = pos + len;
  }
  private end: usize;

  private need(n: usize): void {
    if (this.end - this.pos < n) throw new Error("truncated msgpack envelope");
  }

  byte(): u8 {
    this.need(1);
    const v = load<u8>(this.pos);
    this.pos += 1;
    return v;
  }

  uint(n: i32): u32 {
    let v: u32 = 0;
    for (let i = 0; i < n; i++) v = (v << 8) | <u32>this.byte();
    return v;
  }

  /** (pointer, length) of the next str or bin payload. */
  private raw(): usize {
    const tag = this.byte();
    let n: u32 = 0;
    if ((tag & 0xe0) == 0xa0) n = tag & 0x1f;
    else if (tag == 0xd9 || tag == 0xc4) n = this.uint(1);
    else if (tag == 0xda || tag == 0xc5) n = this.uint(2);
    else if (tag == 0xdb || tag == 0xc6) n = this.uint(4);
    else if (tag == 0xc0) n = 0;
    else throw new Error("expected str or bin");
    this.need(n);
    const start = this.pos;
    this.pos += n;
    this.lastLength = n;
    return start;
  }
  private lastLength: u32 = 0;

  string(): string {
    const start = this.raw();
    return String.UTF8.decodeUnsafe(start, this.lastLength);
  }

  /** The next str as raw bytes (consumed), to match a map key in place (`sameAscii`) instead of
   * decoding it into a string (an allocation and a UTF-8 decode per key): its pointer; its length
   * is `lastKeyLength()`. */
  rawKey(): usize {
    return this.raw();
  }
  lastKeyLength(): u32 {
    return this.lastLength;
  }

  bytes(): Uint8Array {
    const start = this.raw();
    const out = new Uint8Array(this.lastLength);
    memory.copy(out.dataStart, start, this.lastLength);
    return out;
  }

  private container(map: bool): u32 {
    const tag = this.byte();
    if (map && (tag & 0xf0) == 0x80) return tag & 0x0f;
    if (!map && (tag & 0xf0) == 0x90) return tag & 0x0f;
    if (tag == (map ? 0xde : 0xdc)) return this.uint(2);
    if (tag == (map ? 0xdf : 0xdd)) return this.uint(4);
    throw new Error(map ? "expected map" : "expected array");
  }

  mapLength(): u32 {
    return this.container(true);
  }

  arrayLength(): u32 {
    return this.container(false);
  }

  /** Consume a nil if one is next; true when it was. */
  nil(): bool {
    this.need(1);
    if (load<u8>(this.pos) != 0xc0) return false;
    this.pos += 1;
    return true;
  }

  /** An integer of any msgpack width (values beyond i64 wrap). */
  integer(): i64 {
    const tag = this.byte();
    if (tag <= 0x7f) return <i64>tag;
    if (tag >= 0xe0) return <i64><i8>tag;
    if (tag == 0xcc) return <i64>this.uint(1);
    if (tag == 0xcd) return <i64>this.uint(2);
    if (tag == 0xce) return <i64>this.uint(4);
    if (tag == 0xcf) return (<i64>this.uint(4) << 32) | <i64>this.uint(4);
    if (tag == 0xd0) return <i64><i8>this.uint(1);
    if (tag == 0xd1) return <i64><i16>this.uint(2);
    if (tag == 0xd2) return <i64><i32>this.uint(4);
    if (tag == 0xd3) return (<i64>this.uint(4) << 32) | <i64>this.uint(4);
    throw new Error("expected an integer");
  }

  pairs(map: bool): Pair[] {
    const n = this.container(map);
    const out = new Array<Pair>();
    for (let i: u32 = 0; i < n; i++) {
      if (!map && this.container(false) != 2) throw new Error("expected a [name, value] pair");
      const name = this.string();
      out.push(new Pair(name, this.string()));
    }
    return out;
  }

  skip(depth: i32): void {
    if (depth > 64) throw new Error("nested too deep");
    this.need(1);
    const tag = load<u8>(this.pos);
    if (tag <= 0x7f || tag >= 0xe0 || tag == 0xc0 || tag == 0xc2 || tag == 0xc3) {
      this.pos += 1;
    } else if ((tag & 0xe0) == 0xa0 || (tag >= 0xd9 && tag <= 0xdb) || (tag >= 0xc4 && tag <= 0xc6)) {
      this.raw();
    } else if ((tag & 0xf0) == 0x90 || tag == 0xdc || tag == 0xdd) {
      const n = this.container(false);
      for (let i: u32 = 0; i < n; i++) this.skip(depth + 1);
    } else if ((tag & 0xf0) == 0x80 || tag == 0xde || tag == 0xdf) {
      const n = this.container(true);
      for (let i: u32 = 0; i < 2 * n; i++) this.skip(depth + 1);
    } else {
      let size: usize = 0;
      if (tag == 0xcc || tag == 0xd0) size = 2;
      else if (tag == 0xcd || tag == 0xd1 || tag == 0xd4) size = 3;
      else if (tag == 0xd5) size = 4;
      else if (tag == 0xca || tag == 0xce || tag == 0xd2) size = 5;
      else if (tag == 0xd6) size = 6;
      else if (tag == 0xcb || tag == 0xcf || tag == 0xd3) size = 9;
      else if (tag == 0xd7) size = 10;
      else if (tag == 0xd8) size = 18;
      else throw new Error("unsupported msgpack type");
      this.need(size);
      this.pos += size;
    }
  }
}

export class Writer {
  private data: usize;
  private capacity: i32;
  length: i32 = 0;

  constructor(capacity: i32) {
    this.capacity = capacity;
    this.data = heap.alloc(<usize>capacity);
  }

  private reserve(extra: i32): void {
    if (this.length + extra <= this.capacity) return;
    let capacity = this.capacity * 2;
    while (capacity < this.length + extra) capacity *= 2;
    const data = heap.alloc(<usize>capacity);
    memory.copy(data, this.data, <usize>this.length);
    this.data = data;
    this.capacity = capacity;
  }

  pointer(): usize {
    return this.data;
  }

  byte(v: u32): void {
    this.reserve(1);
    store<u8>(this.data + <usize>this.length, <u8>v);
    this.length += 1;
  }

  be(v: u32, n: i32): void {
    for (let i = n - 1; i >= 0; i--) this.byte((v >> (8 * i)) & 0xff);
  }

  raw(ptr: usize, n: i32): void {
    this.reserve(n);
    memory.copy(this.data + <usize>this.length, ptr, <usize>n);
    this.length += n;
  }

  uint(v: u32): void {
    if (v < 0x80) this.byte(v);
    else if (v < 0x100) { this.byte(0xcc); this.be(v, 1); }
    else if (v < 0x10000) { this.byte(0xcd); this.be(v, 2); }
    else { this.byte(0xce); this.be(v, 4); }
  }

  string(s: string): void {
    // Encoded straight into the buffer: no ArrayBuffer per string (the stub runtime never frees one).
    const n = String.UTF8.byteLength(s);
    if (n < 32) this.byte(0xa0 | n);
    else if (n < 0x100) { this.byte(0xd9); this.be(n, 1); }
    else if (n < 0x10000) { this.byte(0xda); this.be(n, 2); }
    else { this.byte(0xdb); this.be(n, 4); }
    this.reserve(n);
    String.UTF8.encodeUnsafe(changetype<usize>(s), s.length, this.data + <usize>this.length);
    this.length += n;
  }

  bin(body: Uint8Array): void {
    const n = body.length;
    if (n < 0x100) { this.byte(0xc4); this.be(n, 1); }
    else if (n < 0x10000) { this.byte(0xc5); this.be(n, 2); }
    else { this.byte(0xc6); this.be(n, 4); }
    this.raw(body.dataStart, n);
  }

  /** A signed integer in its shortest form. */
  int(v: i64): void {
    if (v >= 0) {
      if (v <= <i64>u32.MAX_VALUE) this.uint(<u32>v);
      else { this.byte(0xcf); this.be(<u32>(v >> 32), 4); this.be(<u32>v, 4); }
    } else if (v >= -32) this.byte(<u32>(<i32>v) & 0xff);
    else if (v >= -128) { this.byte(0xd0); this.be(<u32>(<i32>v) & 0xff, 1); }
    else if (v >= -32768) { this.byte(0xd1); this.be(<u32>(<i32>v) & 0xffff, 2); }
    else if (v >= <i64>i32.MIN_VALUE) { this.byte(0xd2); this.be(<u32>(<i32>v), 4); }
    else { this.byte(0xd3); this.be(<u32>(v >> 32), 4); this.be(<u32>v, 4); }
  }

  nil(): void {
    this.byte(0xc0);
  }

  mapLength(n: i32): void {
    if (n < 16) this.byte(0x80 | n);
    else if (n < 0x10000) { this.byte(0xde); this.be(n, 2); }
    else { this.byte(0xdf); this.be(n, 4); }
  }

  arrayLength(n: i32): void {
    if (n < 16) this.byte(0x90 | n);
    else if (n < 0x10000) { this.byte(0xdc); this.be(n, 2); }
    else { this.byte(0xdd); this.be(n, 4); }
  }
}
