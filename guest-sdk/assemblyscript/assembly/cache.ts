// The guest cache of ABI v1 (see ../../ABI.md, "The guest cache"); exported by index.ts as `cache`.

@external("isolate", "cache_get")
declare function hostCacheGet(key: usize, keyLen: usize, out: usize, outCap: usize): i32;
@external("isolate", "cache_put")
declare function hostCachePut(key: usize, keyLen: usize, value: usize, valueLen: usize, ttlMs: i32): i32;

/** The bytes of a cache key or value: a string as UTF-8, or a Uint8Array as is. */
function cacheBytes<T>(data: T): Uint8Array {
  if (isString<T>()) return Uint8Array.wrap(String.UTF8.encode(changetype<string>(data)));
  else if (isReference<T>() && data instanceof Uint8Array) return changetype<Uint8Array>(data);
  else ERROR("a cache key or value is a string or a Uint8Array");
}

/**
 * The guest cache (ABI.md, "The guest cache"): bytes that outlive the request.
 *
 * Every request runs in a fresh isolate, so nothing in memory survives it; entries put here do, for
 * their TTL, unless the host evicts them earlier. Entries are namespaced per module by the host.
 * Keys and values are strings (stored as UTF-8) or Uint8Arrays; keys are 1 to 1024 bytes, values
 * at most 1 MiB.
 */
export namespace cache {
  /** `put`: the key is empty or longer than 1024 bytes. */
  export const BAD_KEY: i32 = -2;
  /** `put`: the value is longer than 1 MiB. */
  export const VALUE_TOO_LARGE: i32 = -3;
  /** `put`: the TTL is not within 1 ms and 24 h (86,400,000 ms). */
  export const BAD_TTL: i32 = -4;
  /** `put`: the host runs without a guest cache, or the entry is larger than all of it. */
  export const REFUSED: i32 = -5;
  export const MAX_KEY: i32 = 1024;
  export const MAX_VALUE: i32 = 1024 * 1024;
  export const MAX_TTL_MS: i32 = 86_400_000;

  const MISS: i32 = -1;
  /** Bytes asked for first: most values fit, in one host call. */
  const FIRST_TRY: i32 = 256;

  /**
   * The value stored under `key`, or null if there is none (never stored, expired or evicted).
   * A bad key (empty or over 1024 bytes) is a programming error: it throws, which traps the isolate.
   */
  export function get<K>(key: K): Uint8Array | null {
    const k = cacheBytes<K>(key);
    let out = new Uint8Array(FIRST_TRY);
    while (true) {
      const n = hostCacheGet(k.dataStart, k.byteLength, out.dataStart, out.byteLength);
      if (n == MISS) return null;
      if (n < 0) throw new RangeError(errorMessage(n));
      if (n <= out.length) return n == out.length ? out : out.slice(0, n);
      // Larger than the buffer: ask again with room for all of it. Another request may replace or
      // drop the value in between, hence the loop.
      out = new Uint8Array(n);
    }
  }

  /** `get`, with the value decoded as UTF-8. */
  export function getString<K>(key: K): string | null {
    const value = get<K>(key);
    return value != null ? String.UTF8.decodeUnsafe(value.dataStart, value.byteLength) : null;
  }

  /**
   * Store `value` under `key` for `ttlMs` milliseconds (1 to 86,400,000), replacing any value.
   * Returns 0 once stored, else a negative code: BAD_KEY, VALUE_TOO_LARGE, BAD_TTL or REFUSED
   * (`errorMessage` describes it).
   */
  export function put<K, V>(key: K, value: V, ttlMs: i32): i32 {
    const k = cacheBytes<K>(key);
    const v = cacheBytes<V>(value);
    return hostCachePut(k.dataStart, k.byteLength, v.dataStart, v.byteLength, ttlMs);
  }

  /** What a `put` (or host) result code means. */
  export function errorMessage(code: i32): string {
    if (code == 0) return "ok";
    if (code == BAD_KEY) return "cache key is empty or longer than 1024 bytes";
    if (code == VALUE_TOO_LARGE) return "cache value is longer than 1 MiB";
    if (code == BAD_TTL) return "cache TTL is not within 1 ms and 24 h";
    if (code == REFUSED) return "the host refused to cache the entry";
    return "unknown cache error " + code.toString();
  }
}
