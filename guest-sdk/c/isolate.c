/* isolate C SDK: ABI v1 exports, the msgpack codec, and the request/response helpers. */
#include "isolate.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT(name) __attribute__((export_name(name)))
#define IMPORT(module, name) __attribute__((import_module(module), import_name(name)))

IMPORT("isolate", "log") void __isolate_host_log(int32_t level, const char *ptr, size_t len);
IMPORT("isolate", "cache_get") int32_t __isolate_host_cache_get(const void *key, size_t key_len, void *out,
                                                              size_t out_cap);
IMPORT("isolate", "cache_put") int32_t __isolate_host_cache_put(const void *key, size_t key_len, const void *value,
                                                              size_t value_len, uint32_t ttl_ms);
IMPORT("isolate", "http_send") int32_t __isolate_host_http_send(const void *req, size_t req_len);
IMPORT("isolate", "http_take") int32_t __isolate_host_http_take(void *out, size_t out_cap);
IMPORT("isolate", "kv_open") int32_t __isolate_host_kv_open(const char *name, size_t name_len);
IMPORT("isolate", "kv_get") int32_t __isolate_host_kv_get(int32_t store, const void *key, size_t key_len, void *out,
                                                        size_t out_cap);
IMPORT("isolate", "kv_set") int32_t __isolate_host_kv_set(int32_t store, const void *key, size_t key_len,
                                                        const void *value, size_t value_len);
IMPORT("isolate", "kv_delete") int32_t __isolate_host_kv_delete(int32_t store, const void *key, size_t key_len);
IMPORT("isolate", "kv_exists") int32_t __isolate_host_kv_exists(int32_t store, const void *key, size_t key_len);
IMPORT("isolate", "kv_list") int32_t __isolate_host_kv_list(int32_t store, const void *prefix, size_t prefix_len,
                                                          const void *cursor, size_t cursor_len, void *out,
                                                          size_t out_cap);
IMPORT("isolate", "out_of_memory") void __isolate_host_out_of_memory(uint32_t requested);

/* ---------- the heap: malloc, free and the rest ----------
 *
 * zig's libc allocator takes a fresh 64 KiB page from memory.grow for every size of block it serves,
 * so a plain request grew memory several times, and every grow costs the host a system call and a
 * larger memory to reset after the request. This heap starts at __heap_base, in the pages the module
 * declares after its stack and data, and grows memory only when they are full.
 *
 * Blocks carry an 8-byte header (their size) and 16-byte aligned payloads, like max_align_t. Small
 * blocks are powers of two from 32 bytes to 64 KiB, header included, with a free list per size;
 * larger ones are multiples of 4 KiB on one first-fit list (split when much larger than asked). A
 * block freed at the top of the heap returns to it, and realloc grows the top block in place, so a
 * growing buffer does not copy. Every request runs in a fresh isolate: the heap never outlives one.
 * These strong definitions replace libc's weak ones, all of them, so no block crosses allocators. */

#define HEAP_ALIGN 16
#define HEAP_HEADER 8
#define HEAP_SMALL_MIN 5  /* 32-byte blocks */
#define HEAP_SMALL_MAX 16 /* 64 KiB blocks */
#define HEAP_LARGE_UNIT 4096
#define HEAP_MAX_REQUEST ((size_t)0x7fff0000) /* larger requests fail at once (a 4 GiB memory) */
#define WASM_PAGE 65536

typedef struct heap_free { struct heap_free *next; } heap_free; /* kept in a free block's payload */

extern unsigned char __heap_base; /* from the linker: the end of the stack and data */
static uintptr_t heap_top;        /* where the next block starts; a payload 16-aligned after the header */
static heap_free *heap_small[HEAP_SMALL_MAX + 1];
static heap_free *heap_large;

static uint32_t *heap_header(void *payload) { return (uint32_t *)((uint8_t *)payload - HEAP_HEADER); }

/* An allocation of n bytes failed: the memory limit refused to grow memory (or n could never fit).
 * The host is told, so a failure that follows (a write through the NULL returned, an abort) is
 * reported as memory_limit rather than as a bare trap; the caller still gets NULL and ENOMEM, as C
 * expects, and may recover. */
static void *heap_failed(size_t n) {
    __isolate_host_out_of_memory(n > UINT32_MAX ? UINT32_MAX : (uint32_t)n);
    errno = ENOMEM;
    return NULL;
}

/* The size of the block that holds n bytes, header included; 0 when n is too large. */
static size_t heap_block_size(size_t n) {
    if (n > HEAP_MAX_REQUEST) return 0;
    size_t need = n + HEAP_HEADER;
    if (need <= (size_t)1 << HEAP_SMALL_MIN) return (size_t)1 << HEAP_SMALL_MIN;
    if (need <= (size_t)1 << HEAP_SMALL_MAX) return (size_t)1 << (32 - __builtin_clz((uint32_t)need - 1));
    return (need + HEAP_LARGE_UNIT - 1) & ~(size_t)(HEAP_LARGE_UNIT - 1);
}

/* Memory up to `end` exists, grown if need be; 0 when the module's memory limit refuses. */
static int heap_reserve(uint64_t end) {
    if (end >= (uint64_t)1 << 32) return 0; /* the top must stay a 32-bit address */
    uint64_t have = (uint64_t)__builtin_wasm_memory_size(0) * WASM_PAGE;
    if (end <= have) return 1;
    return __builtin_wasm_memory_grow(0, (size_t)((end - have + WASM_PAGE - 1) / WASM_PAGE)) != (size_t)-1;
}

/* A new block of `size` bytes at the top of the heap, its payload aligned to `align` (≥ 16). */
static void *heap_bump(size_t size, size_t align) {
    if (!heap_top) heap_top = (uintptr_t)&__heap_base;
    uint64_t payload = ((uint64_t)heap_top + HEAP_HEADER + align - 1) & ~(uint64_t)(align - 1);
    uint64_t start = payload - HEAP_HEADER;
    if (!heap_reserve(start + size)) return NULL;
    heap_top = (uintptr_t)(start + size);
    *(uint32_t *)(uintptr_t)start = (uint32_t)size;
    return (void *)(uintptr_t)payload;
}

void *malloc(size_t n) {
    size_t size = heap_block_size(n);
    void *p = NULL;
    if (size && size <= (size_t)1 << HEAP_SMALL_MAX) {
        heap_free **list = &heap_small[__builtin_ctz((uint32_t)size)];
        if (*list) {
            p = *list;
            *list = (*list)->next;
            return p;
        }
    } else if (size) {
        for (heap_free **at = &heap_large; *at; at = &(*at)->next) {
            uint32_t *header = heap_header(*at);
            if (*header < size) continue;
            p = *at;
            *at = (*at)->next;
            if (*header - size > (size_t)1 << HEAP_SMALL_MAX) { /* the rest stays free, a block of its own */
                heap_free *rest = (heap_free *)((uint8_t *)p + size);
                *heap_header(rest) = *header - (uint32_t)size;
                rest->next = heap_large;
                heap_large = rest;
                *header = (uint32_t)size;
            }
            return p;
        }
    }
    if (size) p = heap_bump(size, HEAP_ALIGN);
    return p ? p : heap_failed(n);
}

void free(void *p) {
    if (!p) return;
    uint32_t *header = heap_header(p);
    if ((uintptr_t)header + *header == heap_top) { /* the top block: give it back to the heap */
        heap_top = (uintptr_t)header;
        return;
    }
    heap_free *block = p;
    heap_free **list = *header <= (uint32_t)1 << HEAP_SMALL_MAX ? &heap_small[__builtin_ctz(*header)] : &heap_large;
    block->next = *list;
    *list = block;
}

void *calloc(size_t count, size_t n) {
    size_t total;
    if (__builtin_mul_overflow(count, n, &total)) return heap_failed(SIZE_MAX);
    void *p = malloc(total);
    if (p) memset(p, 0, total);
    return p;
}

void *realloc(void *p, size_t n) {
    if (!p) return malloc(n);
    uint32_t *header = heap_header(p);
    size_t have = *header - HEAP_HEADER;
    if (n <= have) return p;
    size_t size = heap_block_size(n);
    if (!size) return heap_failed(n);
    if ((uintptr_t)header + *header == heap_top) { /* the top block grows where it is */
        if (!heap_reserve((uint64_t)(uintptr_t)header + size)) return heap_failed(n);
        heap_top = (uintptr_t)header + size;
        *header = (uint32_t)size;
        return p;
    }
    void *moved = malloc(n);
    if (!moved) return NULL;
    memcpy(moved, p, have);
    free(p);
    return moved;
}

void *reallocarray(void *p, size_t count, size_t n) {
    size_t total;
    if (__builtin_mul_overflow(count, n, &total)) return heap_failed(SIZE_MAX);
    return realloc(p, total);
}

void *aligned_alloc(size_t align, size_t n) {
    if (align <= HEAP_ALIGN) return malloc(n);
    size_t size = heap_block_size(n);
    if ((align & (align - 1)) || align > WASM_PAGE) { /* not a power of two, or more than a page can align */
        errno = align & (align - 1) ? EINVAL : ENOMEM;
        return NULL;
    }
    void *p = size ? heap_bump(size, align) : NULL;
    return p ? p : heap_failed(n);
}

void *memalign(size_t align, size_t n) { return aligned_alloc(align, n); }
void *valloc(size_t n) { return aligned_alloc(WASM_PAGE, n); }

int posix_memalign(void **out, size_t align, size_t n) {
    if (align < sizeof(void *) || (align & (align - 1))) return EINVAL;
    void *p = aligned_alloc(align, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}

size_t malloc_usable_size(void *p) { return p ? *heap_header(p) - HEAP_HEADER : 0; }

EXPORT("isolate_abi_v1") void isolate_abi_v1(void) {}

EXPORT("isolate_alloc") void *isolate_alloc(size_t size) {
    void *p = malloc(size ? size : 1);
    if (!p) abort(); /* out of memory: the host reports memory_limit */
    return p;
}

void isolate_log_n(int level, const char *message, size_t len) { __isolate_host_log(level, message, len); }
void isolate_log(int level, const char *message) { isolate_log_n(level, message, strlen(message)); }

/* ---------- the guest cache ---------- */

#define CACHE_MISS (-1) /* the host's result for a missing key; isolate_cache_get answers 0 */
#define FIRST_TRY 256   /* most values fit: one host call, no second allocation */

static int found(void **value, size_t *value_len, void *copy, size_t len) {
    if (value) *value = copy;
    else free(copy);
    if (value_len) *value_len = len;
    return 1;
}

/* A host call that copies at most `cap` bytes of a value to `out` and returns its whole length, or a
 * negative code: the guest cache's and the key-value stores' get. */
typedef int32_t (*value_reader)(const void *args, uint8_t *out, size_t cap);

/* Reads a value of unknown length: into a small buffer first, then again with room for all of it,
 * until it fits. Returns its length with *out a malloc'd copy followed by a NUL (not counted), or
 * the reader's negative code (also when the value went away between the calls). */
static int32_t read_whole(value_reader read, const void *args, uint8_t **out) {
    uint8_t first[FIRST_TRY];
    int32_t n = read(args, first, sizeof first);
    if (n < 0) return n;
    size_t cap = (size_t)n;
    uint8_t *copy = malloc(cap + 1);
    if (!copy) abort();
    if ((size_t)n <= sizeof first) {
        memcpy(copy, first, (size_t)n);
    } else {
        /* Another request may replace the value in between (the guest cache), so repeat until it
         * fits; the key-value host keeps the value it measured, so there one more call does. */
        for (;;) {
            n = read(args, copy, cap);
            if (n < 0) {
                free(copy);
                return n;
            }
            if ((size_t)n <= cap) break;
            cap = (size_t)n;
            copy = realloc(copy, cap + 1);
            if (!copy) abort();
        }
    }
    copy[n] = 0;
    *out = copy;
    return n;
}

struct cache_key { const void *key; size_t key_len; };

static int32_t read_cache(const void *args, uint8_t *out, size_t cap) {
    const struct cache_key *k = args;
    return __isolate_host_cache_get(k->key, k->key_len, out, cap);
}

int isolate_cache_get(const void *key, size_t key_len, void **value, size_t *value_len) {
    if (value) *value = NULL;
    if (value_len) *value_len = 0;
    uint8_t *copy = NULL;
    struct cache_key args = {key, key_len};
    /* Without `value`, only whether it is there (and its length): nothing is copied. */
    int32_t n = value ? read_whole(read_cache, &args, &copy) : __isolate_host_cache_get(key, key_len, NULL, 0);
    if (n == CACHE_MISS) return 0;
    if (n < 0) return n;
    return found(value, value_len, copy, (size_t)n);
}

int isolate_cache_put(const void *key, size_t key_len, const void *value, size_t value_len, uint32_t ttl_ms) {
    return __isolate_host_cache_put(key, key_len, value, value_len, ttl_ms);
}

const char *isolate_cache_strerror(int code) {
    switch (code) {
    case 0: return "ok";
    case ISOLATE_CACHE_BAD_KEY: return "cache key is empty or longer than 1024 bytes";
    case ISOLATE_CACHE_VALUE_TOO_LARGE: return "cache value is longer than 1 MiB";
    case ISOLATE_CACHE_BAD_TTL: return "cache TTL is not within 1 ms and 24 h";
    case ISOLATE_CACHE_REFUSED: return "the host refused to cache the entry";
    default: return "unknown cache error";
    }
}

/* ---------- msgpack decoding (zero-copy: strings point into the request buffer) ---------- */

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
    int ok;
} reader;

static uint32_t be(const uint8_t *p, int n) {
    uint32_t v = 0;
    for (int i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

static int need(reader *r, size_t n) {
    if (!r->ok || (size_t)(r->end - r->p) < n) { r->ok = 0; return 0; }
    return 1;
}

static uint32_t read_len(reader *r, int n) {
    if (!need(r, n)) return 0;
    uint32_t v = be(r->p, n);
    r->p += n;
    return v;
}

/* str or bin: both become an isolate_str */
static isolate_str read_bytes(reader *r) {
    isolate_str s = {"", 0};
    if (!need(r, 1)) return s;
    uint8_t t = *r->p++;
    uint32_t n;
    if ((t & 0xe0) == 0xa0) n = t & 0x1f;
    else if (t == 0xd9 || t == 0xc4) n = read_len(r, 1);
    else if (t == 0xda || t == 0xc5) n = read_len(r, 2);
    else if (t == 0xdb || t == 0xc6) n = read_len(r, 4);
    else if (t == 0xc0) return s; /* nil */
    else { r->ok = 0; return s; }
    if (!need(r, n)) return s;
    s.ptr = (const char *)r->p;
    s.len = n;
    r->p += n;
    return s;
}

static uint32_t read_container(reader *r, int map) {
    if (!need(r, 1)) return 0;
    uint8_t t = *r->p++;
    if (map && (t & 0xf0) == 0x80) return t & 0x0f;
    if (!map && (t & 0xf0) == 0x90) return t & 0x0f;
    if (t == (map ? 0xde : 0xdc)) return read_len(r, 2);
    if (t == (map ? 0xdf : 0xdd)) return read_len(r, 4);
    r->ok = 0;
    return 0;
}

/* an integer (any msgpack int form); 0 and !ok for anything else */
static int64_t read_int(reader *r) {
    if (!need(r, 1)) return 0;
    uint8_t t = *r->p++;
    if (t <= 0x7f) return t;
    if (t >= 0xe0) return (int8_t)t;
    switch (t) {
    case 0xcc: return read_len(r, 1);
    case 0xcd: return read_len(r, 2);
    case 0xce: return read_len(r, 4);
    case 0xcf: { int64_t hi = read_len(r, 4); return (int64_t)((uint64_t)hi << 32 | read_len(r, 4)); }
    case 0xd0: return (int8_t)read_len(r, 1);
    case 0xd1: return (int16_t)read_len(r, 2);
    case 0xd2: return (int32_t)read_len(r, 4);
    case 0xd3: { int64_t hi = read_len(r, 4); return (int64_t)((uint64_t)hi << 32 | read_len(r, 4)); }
    default: r->ok = 0; return 0;
    }
}

static int peek_nil(reader *r) { return r->ok && r->p < r->end && *r->p == 0xc0; }

static void skip(reader *r, int depth) {
    if (!need(r, 1) || depth > 64) { r->ok = 0; return; }
    uint8_t t = *r->p;
    if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) { r->p++; return; }
    if ((t & 0xe0) == 0xa0 || t == 0xd9 || t == 0xda || t == 0xdb || t == 0xc4 || t == 0xc5 || t == 0xc6) {
        read_bytes(r);
        return;
    }
    if ((t & 0xf0) == 0x90 || t == 0xdc || t == 0xdd) {
        uint32_t n = read_container(r, 0);
        for (uint32_t i = 0; i < n && r->ok; i++) skip(r, depth + 1);
        return;
    }
    if ((t & 0xf0) == 0x80 || t == 0xde || t == 0xdf) {
        uint32_t n = read_container(r, 1);
        for (uint32_t i = 0; i < 2 * n && r->ok; i++) skip(r, depth + 1);
        return;
    }
    static const uint8_t fixed[] = {[0xca] = 4, [0xcb] = 8, [0xcc] = 1, [0xcd] = 2, [0xce] = 4, [0xcf] = 8,
                                    [0xd0] = 1, [0xd1] = 2, [0xd2] = 4, [0xd3] = 8, [0xd4] = 2, [0xd5] = 3,
                                    [0xd6] = 5, [0xd7] = 9, [0xd8] = 17};
    if (t < sizeof fixed && fixed[t]) {
        r->p++;
        if (need(r, fixed[t])) r->p += fixed[t];
        return;
    }
    r->ok = 0; /* ext8/16/32 and reserved: never sent by the host */
}

static isolate_pair *read_pairs(reader *r, size_t *count, int map) {
    uint32_t n = read_container(r, map);
    if (!r->ok) return NULL;
    isolate_pair *pairs = calloc(n ? n : 1, sizeof *pairs);
    if (!pairs) abort();
    for (uint32_t i = 0; i < n && r->ok; i++) {
        if (!map && read_container(r, 0) != 2) { r->ok = 0; break; }
        pairs[i].name = read_bytes(r);
        pairs[i].value = read_bytes(r);
    }
    *count = n;
    return pairs;
}

static int key_is(isolate_str key, const char *name) { return isolate_str_eq(key, name); }

static int decode_request(const uint8_t *data, size_t len, isolate_request *req) {
    reader r = {data, data + len, 1};
    memset(req, 0, sizeof *req);
    uint32_t n = read_container(&r, 1);
    for (uint32_t i = 0; i < n && r.ok; i++) {
        isolate_str key = read_bytes(&r);
        if (key_is(key, "method")) req->method = read_bytes(&r);
        else if (key_is(key, "path")) req->path = read_bytes(&r);
        else if (key_is(key, "query")) req->query = read_bytes(&r);
        else if (key_is(key, "body")) req->body = read_bytes(&r);
        else if (key_is(key, "region")) req->region = read_bytes(&r);
        else if (key_is(key, "client_region")) req->client_region = read_bytes(&r);
        else if (key_is(key, "request_id")) req->request_id = read_bytes(&r);
        else if (key_is(key, "headers")) req->headers = read_pairs(&r, &req->header_count, 0);
        else if (key_is(key, "params")) req->params = read_pairs(&r, &req->param_count, 1);
        else if (key_is(key, "vars")) req->vars = read_pairs(&r, &req->var_count, 1);
        else skip(&r, 0); /* unknown keys are ignored, as ABI.md requires */
    }
    return r.ok;
}

/* ---------- request helpers ---------- */

int isolate_str_eq(isolate_str s, const char *text) {
    size_t n = strlen(text);
    return s.len == n && memcmp(s.ptr, text, n) == 0;
}

char *isolate_str_dup(isolate_str s) {
    char *out = malloc(s.len + 1);
    if (!out) abort();
    memcpy(out, s.ptr, s.len);
    out[s.len] = 0;
    return out;
}

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

static const isolate_str *find(const isolate_pair *pairs, size_t count, const char *name, int nocase) {
    size_t n = strlen(name);
    for (size_t i = 0; i < count; i++) {
        if (pairs[i].name.len != n) continue;
        size_t j = 0;
        while (j < n && (nocase ? lower(pairs[i].name.ptr[j]) == lower(name[j]) : pairs[i].name.ptr[j] == name[j])) j++;
        if (j == n) return &pairs[i].value;
    }
    return NULL;
}

const isolate_str *isolate_header(const isolate_request *req, const char *name) {
    return find(req->headers, req->header_count, name, 1);
}
const isolate_str *isolate_param(const isolate_request *req, const char *name) {
    return find(req->params, req->param_count, name, 0);
}
const isolate_str *isolate_var(const isolate_request *req, const char *name) {
    return find(req->vars, req->var_count, name, 0);
}

/* ---------- response builder and msgpack encoding ---------- */

typedef struct {
    uint8_t *data;
    size_t len, cap;
} buffer;

struct isolate_response {
    int status;
    isolate_pair *headers;
    size_t header_count, header_cap;
    buffer body;
};

static void reserve(buffer *b, size_t extra) {
    if (b->len + extra <= b->cap) return;
    size_t cap = b->cap ? b->cap * 2 : 256;
    while (cap < b->len + extra) cap *= 2;
    b->data = realloc(b->data, cap);
    if (!b->data) abort();
    b->cap = cap;
}

static void put(buffer *b, const void *data, size_t len) {
    reserve(b, len);
    if (len) memcpy(b->data + b->len, data, len);
    b->len += len;
}

static void put_byte(buffer *b, uint8_t v) { put(b, &v, 1); }

static void put_be(buffer *b, uint32_t v, int n) {
    for (int i = n - 1; i >= 0; i--) put_byte(b, (uint8_t)(v >> (8 * i)));
}

static void put_str(buffer *b, const char *s, size_t n) {
    if (n < 32) put_byte(b, (uint8_t)(0xa0 | n));
    else if (n < 0x100) { put_byte(b, 0xd9); put_be(b, (uint32_t)n, 1); }
    else if (n < 0x10000) { put_byte(b, 0xda); put_be(b, (uint32_t)n, 2); }
    else { put_byte(b, 0xdb); put_be(b, (uint32_t)n, 4); }
    put(b, s, n);
}

static void put_bin(buffer *b, const void *s, size_t n) {
    if (n < 0x100) { put_byte(b, 0xc4); put_be(b, (uint32_t)n, 1); }
    else if (n < 0x10000) { put_byte(b, 0xc5); put_be(b, (uint32_t)n, 2); }
    else { put_byte(b, 0xc6); put_be(b, (uint32_t)n, 4); }
    put(b, s, n);
}

static void put_uint(buffer *b, uint32_t v) {
    if (v < 0x80) put_byte(b, (uint8_t)v);
    else if (v < 0x100) { put_byte(b, 0xcc); put_be(b, v, 1); }
    else if (v < 0x10000) { put_byte(b, 0xcd); put_be(b, v, 2); }
    else { put_byte(b, 0xce); put_be(b, v, 4); }
}

static void put_array(buffer *b, size_t n) {
    if (n < 16) put_byte(b, (uint8_t)(0x90 | n));
    else if (n < 0x10000) { put_byte(b, 0xdc); put_be(b, (uint32_t)n, 2); }
    else { put_byte(b, 0xdd); put_be(b, (uint32_t)n, 4); }
}

isolate_response *isolate_response_new(int status) {
    isolate_response *res = calloc(1, sizeof *res);
    if (!res) abort();
    res->status = status;
    return res;
}

void isolate_response_status(isolate_response *res, int status) { res->status = status; }

/* Appends a copy of a header (so callers may pass stack buffers) to a growing array of pairs. */
static void append_pair(isolate_pair **pairs, size_t *count, size_t *cap, const char *name, size_t name_len,
                        const char *value, size_t value_len) {
    if (*count == *cap) {
        *cap = *cap ? *cap * 2 : 8;
        *pairs = realloc(*pairs, *cap * sizeof **pairs);
        if (!*pairs) abort();
    }
    char *copy = malloc(name_len + value_len + 1);
    if (!copy) abort();
    memcpy(copy, name, name_len);
    memcpy(copy + name_len, value, value_len);
    isolate_pair *pair = &(*pairs)[(*count)++];
    pair->name = (isolate_str){copy, name_len};
    pair->value = (isolate_str){copy + name_len, value_len};
}

void isolate_response_header_n(isolate_response *res, const char *name, size_t name_len, const char *value,
                               size_t value_len) {
    append_pair(&res->headers, &res->header_count, &res->header_cap, name, name_len, value, value_len);
}

void isolate_response_header(isolate_response *res, const char *name, const char *value) {
    isolate_response_header_n(res, name, strlen(name), value, strlen(value));
}

void isolate_response_body(isolate_response *res, const void *data, size_t len) {
    res->body.len = 0;
    put(&res->body, data, len);
}

void isolate_response_body_str(isolate_response *res, const char *text) {
    isolate_response_body(res, text, strlen(text));
}

void isolate_response_append(isolate_response *res, const void *data, size_t len) { put(&res->body, data, len); }

static uint64_t encode_response(const isolate_response *res) {
    buffer out = {0};
    reserve(&out, 32 + res->body.len);
    put_byte(&out, 0x83);
    put_str(&out, "status", 6);
    put_uint(&out, (uint32_t)res->status);
    put_str(&out, "headers", 7);
    put_array(&out, res->header_count);
    for (size_t i = 0; i < res->header_count; i++) {
        put_byte(&out, 0x92);
        put_str(&out, res->headers[i].name.ptr, res->headers[i].name.len);
        put_str(&out, res->headers[i].value.ptr, res->headers[i].value.len);
    }
    put_str(&out, "body", 4);
    put_bin(&out, res->body.data, res->body.len);
    return ((uint64_t)(uintptr_t)out.data << 32) | (uint64_t)out.len;
}

EXPORT("isolate_handle") uint64_t isolate_handle(const uint8_t *ptr, size_t len) {
    isolate_request req;
    isolate_response *res;
    if (!decode_request(ptr, len, &req)) {
        isolate_log(ISOLATE_ERROR, "isolate C SDK: malformed request envelope");
        res = isolate_response_new(500);
        isolate_response_body_str(res, "malformed request envelope\n");
    } else {
        res = isolate_on_request(&req);
        if (!res) {
            res = isolate_response_new(500);
            isolate_response_body_str(res, "handler returned no response\n");
        }
    }
    return encode_response(res);
}


/* ---------- query strings ---------- */

static int hex(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    c = lower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* percent-decodes s[0..n) into out (room for n bytes); '+' is a space; a bad escape stays as it is */
static size_t form_decode(const char *s, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '+') out[o++] = ' ';
        else if (s[i] == '%' && i + 2 < n && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
            out[o++] = (char)(hex(s[i + 1]) << 4 | hex(s[i + 2]));
            i += 2;
        } else out[o++] = s[i];
    }
    return o;
}

char *isolate_query_param(const isolate_request *req, const char *name) {
    const char *q = req->query.ptr, *end = q + req->query.len;
    size_t want = strlen(name);
    char *scratch = NULL;
    while (q && q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *stop = amp ? amp : end;
        const char *eq = memchr(q, '=', (size_t)(stop - q));
        const char *name_end = eq ? eq : stop;
        size_t raw = (size_t)(name_end - q);
        if (raw >= want) { /* a decoded name is never longer than its raw form */
            scratch = realloc(scratch, raw ? raw : 1);
            if (!scratch) abort();
            if (form_decode(q, raw, scratch) == want && memcmp(scratch, name, want) == 0) {
                free(scratch);
                size_t vlen = eq ? (size_t)(stop - eq - 1) : 0;
                char *value = malloc(vlen + 1);
                if (!value) abort();
                value[eq ? form_decode(eq + 1, vlen, value) : 0] = 0;
                return value;
            }
        }
        q = amp ? amp + 1 : end;
    }
    free(scratch);
    return NULL;
}

/* ---------- JSON ---------- */

isolate_response *isolate_response_json(int status, const char *json) {
    isolate_response *res = isolate_response_new(status);
    isolate_response_header(res, "content-type", "application/json");
    isolate_response_body_str(res, json);
    return res;
}

/* The length of the valid UTF-8 sequence at s[0..n) (s[0] >= 0x80), or 0 with *skip the length of
 * its maximal invalid subpart (Unicode's "U+FFFD substitution of maximal subparts"). */
static size_t utf8_sequence(const uint8_t *s, size_t n, size_t *skip) {
    uint8_t c = s[0];
    size_t len;
    uint8_t lo = 0x80, hi = 0xbf; /* the range of the second byte */
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c >= 0xe0 && c <= 0xef) { len = 3; if (c == 0xe0) lo = 0xa0; if (c == 0xed) hi = 0x9f; }
    else if (c >= 0xf0 && c <= 0xf4) { len = 4; if (c == 0xf0) lo = 0x90; if (c == 0xf4) hi = 0x8f; }
    else { *skip = 1; return 0; }
    size_t i = 1;
    for (; i < len && i < n; i++) {
        uint8_t b = s[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xbf)) break;
    }
    if (i == len) return len;
    *skip = i;
    return 0;
}

char *isolate_json_quote(const char *s, size_t len) {
    static const char digits[] = "0123456789abcdef";
    buffer out = {0};
    reserve(&out, len + 3);
    put_byte(&out, '"');
    const uint8_t *p = (const uint8_t *)s;
    size_t i = 0;
    while (i < len) {
        uint8_t c = p[i];
        if (c == '"' || c == '\\') {
            uint8_t esc[2] = {'\\', c};
            put(&out, esc, 2);
            i++;
        } else if (c < 0x20) {
            uint8_t esc[6] = {'\\', 'u', '0', '0', (uint8_t)digits[c >> 4], (uint8_t)digits[c & 15]};
            put(&out, esc, 6);
            i++;
        } else if (c < 0x80) {
            size_t j = i + 1; /* a run of plain ASCII in one copy */
            while (j < len && p[j] >= 0x20 && p[j] < 0x80 && p[j] != '"' && p[j] != '\\') j++;
            put(&out, p + i, j - i);
            i = j;
        } else {
            size_t skip_len = 0, n = utf8_sequence(p + i, len - i, &skip_len);
            if (n) {
                put(&out, p + i, n);
                i += n;
            } else {
                put(&out, "\xef\xbf\xbd", 3); /* U+FFFD */
                i += skip_len;
            }
        }
    }
    put_byte(&out, '"');
    put_byte(&out, 0);
    return (char *)out.data;
}

/* ---------- outbound HTTP ---------- */

static void put_int(buffer *b, int64_t v) {
    if (v >= 0 && v <= 0xffffffff) put_uint(b, (uint32_t)v);
    else if (v >= -32) put_byte(b, (uint8_t)(int8_t)v);
    else if (v >= INT32_MIN) { put_byte(b, 0xd2); put_be(b, (uint32_t)(int32_t)v, 4); }
    else { put_byte(b, 0xd3); put_be(b, (uint32_t)((uint64_t)v >> 32), 4); put_be(b, (uint32_t)v, 4); }
}

static void put_map(buffer *b, size_t n) { put_byte(b, (uint8_t)(0x80 | n)); } /* n < 16 */

void isolate_fetch_request_init(isolate_fetch_request *req, const char *method, const char *url) {
    memset(req, 0, sizeof *req);
    req->method = method;
    req->url = url;
}

void isolate_fetch_request_header_n(isolate_fetch_request *req, const char *name, size_t name_len,
                                    const char *value, size_t value_len) {
    append_pair(&req->headers, &req->header_count, &req->header_cap, name, name_len, value, value_len);
}

void isolate_fetch_request_header(isolate_fetch_request *req, const char *name, const char *value) {
    isolate_fetch_request_header_n(req, name, strlen(name), value, strlen(value));
}

static int decode_fetch_response(const uint8_t *data, size_t len, isolate_fetch_response *out) {
    reader r = {data, data + len, 1};
    int has_status = 0;
    uint32_t n = read_container(&r, 1);
    for (uint32_t i = 0; i < n && r.ok; i++) {
        isolate_str key = read_bytes(&r);
        if (key_is(key, "status")) { out->status = (int)read_int(&r); has_status = 1; }
        else if (key_is(key, "headers")) out->headers = read_pairs(&r, &out->header_count, 0);
        else if (key_is(key, "body")) out->body = read_bytes(&r);
        else if (key_is(key, "url")) out->url = read_bytes(&r);
        else skip(&r, 0);
    }
    return r.ok && has_status;
}

int isolate_fetch(const isolate_fetch_request *req, isolate_fetch_response *out) {
    memset(out, 0, sizeof *out);
    out->body = out->url = (isolate_str){"", 0};
    if (!req->url) return ISOLATE_FETCH_BAD_REQUEST;
    const char *method = req->method ? req->method : "GET";
    buffer env = {0};
    reserve(&env, 64 + strlen(req->url) + req->body_len);
    put_map(&env, req->body ? 6 : 5);
    put_str(&env, "url", 3);
    put_str(&env, req->url, strlen(req->url));
    put_str(&env, "method", 6);
    put_str(&env, method, strlen(method));
    put_str(&env, "headers", 7);
    put_array(&env, req->header_count);
    for (size_t i = 0; i < req->header_count; i++) {
        put_byte(&env, 0x92);
        put_str(&env, req->headers[i].name.ptr, req->headers[i].name.len);
        put_str(&env, req->headers[i].value.ptr, req->headers[i].value.len);
    }
    if (req->body) {
        put_str(&env, "body", 4);
        put_bin(&env, req->body, req->body_len);
    }
    put_str(&env, "redirects", 9);
    put_int(&env, req->redirects);
    put_str(&env, "timeout_ms", 10);
    put_uint(&env, req->timeout_ms);
    int32_t n = __isolate_host_http_send(env.data, env.len);
    free(env.data);
    if (n < 0) return n;
    uint8_t *data = malloc(n ? (size_t)n : 1);
    if (!data) abort();
    int32_t taken = __isolate_host_http_take(data, (size_t)n);
    if (taken != n || !decode_fetch_response(data, (size_t)n, out)) {
        free(out->headers);
        free(data);
        memset(out, 0, sizeof *out);
        out->body = out->url = (isolate_str){"", 0};
        isolate_log(ISOLATE_ERROR, "isolate C SDK: malformed outbound HTTP response envelope");
        return ISOLATE_FETCH_PROTOCOL;
    }
    out->envelope = data;
    return 0;
}

const isolate_str *isolate_fetch_header(const isolate_fetch_response *res, const char *name) {
    return find(res->headers, res->header_count, name, 1);
}

void isolate_fetch_response_free(isolate_fetch_response *res) {
    free(res->headers);
    free(res->envelope);
    memset(res, 0, sizeof *res);
    res->body = res->url = (isolate_str){"", 0};
}

static const char *const FETCH_NAMES[] = {"bad_request", "denied", "blocked_address", "too_many_requests",
                                          "unreachable", "timeout", "too_large", "protocol", "too_many_redirects"};
static const char *const FETCH_MESSAGES[] = {
    "the request breaks the outbound request rules", "the URL's host is not in allowed_hosts",
    "the host resolves to a blocked address", "too many outbound requests for this request",
    "the origin is unreachable", "the origin did not answer in time", "the origin's answer is too large",
    "the origin's answer is not valid HTTP/1.1", "too many redirects"};

const char *isolate_fetch_error_name(int code) {
    if (code == 0) return "ok";
    return code < 0 && code >= -9 ? FETCH_NAMES[-code - 1] : "unknown";
}

const char *isolate_fetch_strerror(int code) {
    if (code == 0) return "ok";
    return code < 0 && code >= -9 ? FETCH_MESSAGES[-code - 1] : "unknown outbound HTTP error";
}

/* ---------- key-value stores ---------- */

int isolate_kv_open(const char *name) { return __isolate_host_kv_open(name, strlen(name)); }

struct kv_key { int store; const void *key; size_t key_len; };

static int32_t read_kv(const void *args, uint8_t *out, size_t cap) {
    const struct kv_key *k = args;
    return __isolate_host_kv_get(k->store, k->key, k->key_len, out, cap);
}

int isolate_kv_get(int store, const void *key, size_t key_len, void **value, size_t *value_len) {
    if (value) *value = NULL;
    if (value_len) *value_len = 0;
    uint8_t *copy = NULL;
    struct kv_key args = {store, key, key_len};
    int32_t n = read_whole(read_kv, &args, &copy);
    if (n == ISOLATE_KV_NOT_FOUND) return 0;
    if (n < 0) return n;
    return found(value, value_len, copy, (size_t)n);
}

int isolate_kv_set(int store, const void *key, size_t key_len, const void *value, size_t value_len) {
    return __isolate_host_kv_set(store, key, key_len, value, value_len);
}

int isolate_kv_delete(int store, const void *key, size_t key_len) {
    return __isolate_host_kv_delete(store, key, key_len);
}

int isolate_kv_exists(int store, const void *key, size_t key_len) {
    return __isolate_host_kv_exists(store, key, key_len);
}

static int decode_page(const uint8_t *data, size_t len, isolate_kv_page *page) {
    reader r = {data, data + len, 1};
    uint32_t n = read_container(&r, 1);
    for (uint32_t i = 0; i < n && r.ok; i++) {
        isolate_str key = read_bytes(&r);
        if (key_is(key, "keys")) {
            uint32_t count = read_container(&r, 0);
            if (!r.ok || count > len) return 0; /* every key takes at least one byte */
            free(page->keys);
            page->keys = calloc(count ? count : 1, sizeof *page->keys);
            if (!page->keys) abort();
            for (uint32_t k = 0; k < count && r.ok; k++) page->keys[k] = read_bytes(&r);
            page->key_count = count;
        } else if (key_is(key, "cursor")) {
            if (peek_nil(&r)) { r.p++; page->cursor = NULL; continue; }
            isolate_str cursor = read_bytes(&r);
            if (!page->cursor) page->cursor = malloc(sizeof *page->cursor);
            if (!page->cursor) abort();
            *page->cursor = cursor;
        } else skip(&r, 0);
    }
    return r.ok;
}

int isolate_kv_list(int store, const void *prefix, size_t prefix_len, const void *cursor, size_t cursor_len,
                    isolate_kv_page *page) {
    memset(page, 0, sizeof *page);
    uint8_t *data = malloc(FIRST_TRY);
    if (!data) abort();
    size_t cap = FIRST_TRY;
    int32_t n;
    for (;;) {
        n = __isolate_host_kv_list(store, prefix, prefix_len, cursor, cursor_len, data, cap);
        if (n < 0) {
            free(data);
            return n;
        }
        if ((size_t)n <= cap) break;
        cap = (size_t)n; /* too small: the host keeps this page for a call with room for it */
        free(data);
        data = malloc(cap);
        if (!data) abort();
    }
    if (!decode_page(data, (size_t)n, page)) {
        isolate_kv_page_free(page);
        free(data);
        isolate_log(ISOLATE_ERROR, "isolate C SDK: malformed key-value page");
        return ISOLATE_KV_STORAGE;
    }
    page->data = data;
    return 0;
}

void isolate_kv_page_free(isolate_kv_page *page) {
    free(page->keys);
    free(page->cursor);
    free(page->data);
    memset(page, 0, sizeof *page);
}

static const char *const KV_NAMES[] = {"not_found", "bad_key", "too_large", "no_such_store",
                                       "store_full", "storage", "too_many_operations"};
static const char *const KV_MESSAGES[] = {
    "no such key", "key is empty or longer than 1024 bytes", "value is longer than 1 MiB",
    "no such store (not granted, or not an open handle)", "the store is full",
    "the store cannot be read or written", "too many key-value operations for this request"};

const char *isolate_kv_error_name(int code) {
    if (code >= 0) return "ok";
    return code >= -7 ? KV_NAMES[-code - 1] : "unknown";
}

const char *isolate_kv_strerror(int code) {
    if (code >= 0) return "ok";
    return code >= -7 ? KV_MESSAGES[-code - 1] : "unknown key-value error";
}
