// Key-value stores of ABI v1 (see ../../ABI.md, "Key-value stores"); exported by index.ts as `kv`.
//
// The host functions are imported only by a module that calls them: asc drops unused imports.

import { Reader } from "./msgpack";

@external("isolate", "kv_open")
declare function hostKvOpen(name: usize, nameLen: usize): i32;
@external("isolate", "kv_get")
declare function hostKvGet(store: i32, key: usize, keyLen: usize, out: usize, outCap: usize): i32;
@external("isolate", "kv_set")
declare function hostKvSet(store: i32, key: usize, keyLen: usize, value: usize, valueLen: usize): i32;
@external("isolate", "kv_delete")
declare function hostKvDelete(store: i32, key: usize, keyLen: usize): i32;
@external("isolate", "kv_exists")
declare function hostKvExists(store: i32, key: usize, keyLen: usize): i32;
@external("isolate", "kv_list")
declare function hostKvList(store: i32, prefix: usize, prefixLen: usize, cursor: usize, cursorLen: usize,
                            out: usize, outCap: usize): i32;

/** The bytes of a key, prefix or value: a string as UTF-8, or a Uint8Array as is. */
function kvBytes<T>(data: T): Uint8Array {
  if (isString<T>()) return Uint8Array.wrap(String.UTF8.encode(changetype<string>(data)));
  else if (isReference<T>() && data instanceof Uint8Array) return changetype<Uint8Array>(data);
  else ERROR("a key-value key, prefix or value is a string or a Uint8Array");
}

/** One page of `kv.list`: up to 100 keys in byte order, and the cursor of the next page (null on the last). */
export class KvPage {
  keys: Uint8Array[] = [];
  cursor: Uint8Array | null = null;

  /** The keys decoded as UTF-8. */
  strings(): string[] {
    const out = new Array<string>(this.keys.length);
    for (let i = 0; i < this.keys.length; i++) {
      out[i] = String.UTF8.decodeUnsafe(this.keys[i].dataStart, this.keys[i].length);
    }
    return out;
  }

  /** The cursor decoded as UTF-8, or null on the last page. */
  cursorString(): string | null {
    const cursor = this.cursor;
    return cursor != null ? String.UTF8.decodeUnsafe(cursor.dataStart, cursor.length) : null;
  }
}

function decodePage(data: Uint8Array): KvPage {
  const r = new Reader(data.dataStart, data.length);
  const page = new KvPage();
  const fields = r.mapLength();
  for (let i: u32 = 0; i < fields; i++) {
    const key = r.string();
    if (key == "keys") {
      const n = r.arrayLength();
      for (let j: u32 = 0; j < n; j++) page.keys.push(r.bytes());
    } else if (key == "cursor") {
      page.cursor = r.nil() ? null : r.bytes();
    } else r.skip(0);
  }
  return page;
}

/**
 * Named, persistent key-value stores (ABI.md, "Key-value stores"). Open a store the module was
 * granted (`key_value_stores`) with `kv.open(name)`, then pass the handle to the other calls. Keys,
 * prefixes and values are strings (as UTF-8) or Uint8Arrays. Results are codes, not exceptions: a
 * call that can fail returns a negative `kv.*` code, or (`get`, `list`) null with `kv.lastError` set.
 */
export abstract class kv {
  /** `get`: no such key (not an error: `get` returns null and sets lastError to it). */
  static readonly NOT_FOUND: i32 = -1;
  /** The key is empty or longer than 1024 bytes (a prefix or cursor longer than 1024 bytes). */
  static readonly BAD_KEY: i32 = -2;
  /** `set`: the value is longer than 1 MiB. */
  static readonly TOO_LARGE: i32 = -3;
  /** `open`: the module was not granted this store; otherwise not a handle from `open`. */
  static readonly NO_SUCH_STORE: i32 = -4;
  /** `set`: the store would exceed its size. */
  static readonly STORE_FULL: i32 = -5;
  /** The store cannot be read or written (the host logs why). */
  static readonly STORAGE: i32 = -6;
  /** The module's `kv_operations` calls were already made for this request. */
  static readonly TOO_MANY_OPERATIONS: i32 = -7;
  static readonly MAX_KEY: i32 = 1024;
  static readonly MAX_VALUE: i32 = 1024 * 1024;

  /** The result of the last `get` or `list`: 0, NOT_FOUND or another negative code. */
  static lastError: i32 = 0;

  /** A handle (≥ 0) on the store `name`, valid for this request, or a negative code (NO_SUCH_STORE). */
  static open(name: string): i32 {
    const bytes = String.UTF8.encode(name);
    return hostKvOpen(changetype<usize>(bytes), <usize>bytes.byteLength);
  }

  /**
   * The value under `key`, or null: missing (`kv.lastError == kv.NOT_FOUND`) or an error
   * (`kv.lastError` < 0, another code). `kv.lastError` is 0 when a value is returned.
   */
  static get<K>(store: i32, key: K): Uint8Array | null {
    const k = kvBytes<K>(key);
    let out = new Uint8Array(256);
    while (true) {
      const n = hostKvGet(store, k.dataStart, <usize>k.byteLength, out.dataStart, <usize>out.byteLength);
      if (n < 0) {
        kv.lastError = n;
        return null;
      }
      if (n <= out.length) {
        kv.lastError = 0;
        return n == out.length ? out : out.slice(0, n);
      }
      // Larger than the buffer: the host keeps this value for the next call of the same key.
      out = new Uint8Array(n);
    }
  }

  /** `get`, with the value decoded as UTF-8. */
  static getString<K>(store: i32, key: K): string | null {
    const value = kv.get<K>(store, key);
    return value != null ? String.UTF8.decodeUnsafe(value.dataStart, value.byteLength) : null;
  }

  /** Store `value` under `key`: 0 once durable, else a negative code (BAD_KEY, TOO_LARGE, STORE_FULL, ...). */
  static set<K, V>(store: i32, key: K, value: V): i32 {
    const k = kvBytes<K>(key);
    const v = kvBytes<V>(value);
    return hostKvSet(store, k.dataStart, <usize>k.byteLength, v.dataStart, <usize>v.byteLength);
  }

  /** Remove `key`: 0 whether or not it existed, else a negative code. */
  static delete<K>(store: i32, key: K): i32 {
    const k = kvBytes<K>(key);
    return hostKvDelete(store, k.dataStart, <usize>k.byteLength);
  }

  /** 1 if `key` exists, 0 if not, else a negative code. */
  static exists<K>(store: i32, key: K): i32 {
    const k = kvBytes<K>(key);
    return hostKvExists(store, k.dataStart, <usize>k.byteLength);
  }

  /**
   * Up to 100 keys starting with `prefix` (may be empty), in byte order, after `cursor` (null: from
   * the start; else a page's `cursor`). Null on error, with `kv.lastError` set.
   */
  static list<P>(store: i32, prefix: P, cursor: Uint8Array | null = null): KvPage | null {
    const p = kvBytes<P>(prefix);
    const c = cursor != null ? cursor : new Uint8Array(0);
    let out = new Uint8Array(1024);
    while (true) {
      const n = hostKvList(store, p.dataStart, <usize>p.byteLength, c.dataStart, <usize>c.byteLength,
                           out.dataStart, <usize>out.byteLength);
      if (n < 0) {
        kv.lastError = n;
        return null;
      }
      if (n <= out.length) {
        kv.lastError = 0;
        return decodePage(n == out.length ? out : out.subarray(0, n));
      }
      out = new Uint8Array(n);
    }
  }

  /** The ABI name of a code: "not_found", "bad_key", ...; "unknown" for any other code. */
  static errorName(code: i32): string {
    switch (code) {
      case 0: return "ok";
      case -1: return "not_found";
      case -2: return "bad_key";
      case -3: return "too_large";
      case -4: return "no_such_store";
      case -5: return "store_full";
      case -6: return "storage";
      case -7: return "too_many_operations";
      default: return "unknown";
    }
  }

  /** A short description of a code. */
  static errorMessage(code: i32): string {
    switch (code) {
      case 0: return "ok";
      case -1: return "no such key";
      case -2: return "the key is empty or longer than 1024 bytes";
      case -3: return "the value is longer than 1 MiB";
      case -4: return "no such key-value store (not granted, or not a handle)";
      case -5: return "the key-value store is full";
      case -6: return "the key-value store cannot be read or written";
      case -7: return "too many key-value operations for this request";
      default: return "unknown key-value error " + code.toString();
    }
  }
}
