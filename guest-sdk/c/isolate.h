/* isolate C SDK: write an edge handler for the isolate runtime (ABI v1, see ../ABI.md).
 *
 *   #include "isolate.h"
 *
 *   isolate_response *isolate_on_request(const isolate_request *req) {
 *       isolate_response *res = isolate_response_new(200);
 *       isolate_response_header(res, "content-type", "text/plain");
 *       isolate_response_body_str(res, "hello\n");
 *       return res;
 *   }
 *
 * Build: zig cc --target=wasm32-wasi -mexec-model=reactor -O2 isolate.c handler.c -o handler.wasm
 * (or `isolate build DIR`). Strings in a request are not NUL-terminated: use .ptr and .len, or the
 * helpers below. Everything the SDK allocates lives until the request ends (a fresh isolate each time).
 */
#ifndef ISOLATE_H
#define ISOLATE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *ptr;
    size_t len;
} isolate_str;

typedef struct {
    isolate_str name;
    isolate_str value;
} isolate_pair;

typedef struct {
    isolate_str method;
    isolate_str path;
    isolate_str query;           /* without the '?' */
    isolate_pair *headers;       /* names lower-case, in request order, duplicates kept */
    size_t header_count;
    isolate_str body;            /* bytes; may contain NUL */
    isolate_pair *params;        /* route parameters, e.g. :id */
    size_t param_count;
    isolate_pair *vars;          /* the module's deployment variables */
    size_t var_count;
    isolate_str region;          /* region this request runs in */
    isolate_str client_region;   /* region the client was resolved to */
    isolate_str request_id;
} isolate_request;

typedef struct isolate_response isolate_response;

/* The handler you write. Returning NULL answers 500. */
isolate_response *isolate_on_request(const isolate_request *req);

/* Request helpers. Lookups return NULL when absent; header names match case-insensitively. */
const isolate_str *isolate_header(const isolate_request *req, const char *name);
const isolate_str *isolate_param(const isolate_request *req, const char *name);
const isolate_str *isolate_var(const isolate_request *req, const char *name);
int isolate_str_eq(isolate_str s, const char *text);
char *isolate_str_dup(isolate_str s); /* a NUL-terminated copy */

/* Response builder. Header names and values must not contain CR, LF or NUL (the host refuses). */
isolate_response *isolate_response_new(int status);
void isolate_response_status(isolate_response *res, int status);
void isolate_response_header(isolate_response *res, const char *name, const char *value);
void isolate_response_header_n(isolate_response *res, const char *name, size_t name_len,
                               const char *value, size_t value_len);
void isolate_response_body(isolate_response *res, const void *data, size_t len);
void isolate_response_body_str(isolate_response *res, const char *text);
void isolate_response_append(isolate_response *res, const void *data, size_t len);

/* Logging through the host (kept with the request, tagged with its request id). */
enum { ISOLATE_DEBUG = 0, ISOLATE_INFO = 1, ISOLATE_WARN = 2, ISOLATE_ERROR = 3 };
void isolate_log(int level, const char *message);
void isolate_log_n(int level, const char *message, size_t len);

/* The guest cache (ABI.md, "The guest cache"): bytes that outlive the request, per module, for a
 * TTL (and may be evicted earlier). Keys are 1..1024 bytes, values at most 1 MiB.
 *
 * isolate_cache_get: 1 when found, with *value a malloc'd copy the caller frees (followed by a NUL
 * byte not counted in *value_len, so a text value is also a C string); 0 when missing (never stored,
 * expired or evicted), with *value NULL and *value_len 0; or a negative ISOLATE_CACHE_* code.
 * value and value_len may be NULL to only ask whether the key is there.
 *
 * isolate_cache_put: 0 once stored (replacing any value of that key), or a negative code. */
enum {
    ISOLATE_CACHE_BAD_KEY = -2,         /* the key is empty or longer than 1024 bytes */
    ISOLATE_CACHE_VALUE_TOO_LARGE = -3, /* the value is longer than 1 MiB */
    ISOLATE_CACHE_BAD_TTL = -4,         /* ttl_ms is not within 1 .. 86,400,000 (24 h) */
    ISOLATE_CACHE_REFUSED = -5,         /* the host has no guest cache, or the entry is larger than it */
};
#define ISOLATE_CACHE_MAX_KEY 1024
#define ISOLATE_CACHE_MAX_VALUE (1024 * 1024)
#define ISOLATE_CACHE_MAX_TTL_MS 86400000u
int isolate_cache_get(const void *key, size_t key_len, void **value, size_t *value_len);
int isolate_cache_put(const void *key, size_t key_len, const void *value, size_t value_len, uint32_t ttl_ms);
const char *isolate_cache_strerror(int code); /* a message for a code, e.g. to log */

/* Query strings: the first value of the query parameter `name` (names and values percent-decoded,
 * '+' as a space), as a malloc'd NUL-terminated string the caller may free; NULL when absent. A
 * parameter without '=' has the value "". */
char *isolate_query_param(const isolate_request *req, const char *name);

/* JSON answers. isolate_response_json: a response with `content-type: application/json` and `json`
 * as its body. isolate_json_quote: `s` (len bytes of UTF-8) as a JSON string literal, quotes
 * included, escaped per RFC 8259 ('"' and '\\' with a backslash, control characters as \u00XX);
 * invalid UTF-8 becomes U+FFFD. Malloc'd and NUL-terminated; the caller may free it. */
isolate_response *isolate_response_json(int status, const char *json);
char *isolate_json_quote(const char *s, size_t len);

/* Outbound HTTP (ABI.md, "Outbound HTTP"): one request to an origin the module's `allowed_hosts`
 * names, waiting for the whole answer.
 *
 *   isolate_fetch_request r;
 *   isolate_fetch_request_init(&r, "GET", "https://api.example.com/v1/items");
 *   isolate_fetch_request_header(&r, "accept", "application/json");
 *   isolate_fetch_response resp;
 *   int err = isolate_fetch(&r, &resp);     // 0, or a negative ISOLATE_FETCH_* code
 *
 * The response's strings point into one malloc'd buffer, which isolate_fetch_response_free
 * releases (optional: everything is dropped with the isolate). */
enum {
    ISOLATE_FETCH_BAD_REQUEST = -1,        /* the request breaks the envelope's rules (URL, method, headers...) */
    ISOLATE_FETCH_DENIED = -2,             /* the URL's scheme, host or port is not in allowed_hosts */
    ISOLATE_FETCH_BLOCKED_ADDRESS = -3,    /* the host resolves to a loopback/private/metadata address */
    ISOLATE_FETCH_TOO_MANY_REQUESTS = -4,  /* the module's outbound_requests were already made */
    ISOLATE_FETCH_UNREACHABLE = -5,        /* no such name, or the connection or TLS handshake failed */
    ISOLATE_FETCH_TIMEOUT = -6,            /* the call's timeout passed before the whole answer arrived */
    ISOLATE_FETCH_TOO_LARGE = -7,          /* the answer's body exceeds outbound_response_size */
    ISOLATE_FETCH_PROTOCOL = -8,           /* the origin's answer is not valid HTTP/1.1 */
    ISOLATE_FETCH_TOO_MANY_REDIRECTS = -9, /* more redirects than the request allowed */
};
#define ISOLATE_FETCH_MAX_REDIRECTS 10

typedef struct {
    const char *method;      /* NULL means "GET" */
    const char *url;         /* absolute http:// or https:// URL */
    isolate_pair *headers;   /* added with isolate_fetch_request_header(_n), which copies them */
    size_t header_count;
    size_t header_cap;       /* used by isolate_fetch_request_header */
    const void *body;        /* body_len bytes sent with content-length; NULL for none */
    size_t body_len;
    int redirects;           /* redirects to follow, 0..10; 0 returns a 3xx answer as it is */
    uint32_t timeout_ms;     /* this call's timeout; 0 means the module's outbound_timeout */
} isolate_fetch_request;

typedef struct {
    int status;
    isolate_pair *headers;   /* names lower-case, in the origin's order, duplicates kept */
    size_t header_count;
    isolate_str body;        /* bytes (de-chunked, never decompressed); may contain NUL */
    isolate_str url;         /* the URL that answered, after redirects */
    void *envelope;          /* the buffer the strings point into */
} isolate_fetch_response;

/* Zeroes *req and sets method (NULL: GET) and url; the strings are referenced, not copied. */
void isolate_fetch_request_init(isolate_fetch_request *req, const char *method, const char *url);
void isolate_fetch_request_header(isolate_fetch_request *req, const char *name, const char *value);
void isolate_fetch_request_header_n(isolate_fetch_request *req, const char *name, size_t name_len,
                                    const char *value, size_t value_len);
/* 0 with *out filled in, or a negative ISOLATE_FETCH_* code with *out zeroed. */
int isolate_fetch(const isolate_fetch_request *req, isolate_fetch_response *out);
/* The first value of a response header (name matched case-insensitively), or NULL. */
const isolate_str *isolate_fetch_header(const isolate_fetch_response *res, const char *name);
void isolate_fetch_response_free(isolate_fetch_response *res);
const char *isolate_fetch_error_name(int code); /* "denied", ...; "unknown" for another code */
const char *isolate_fetch_strerror(int code);   /* a short message, e.g. to log */

/* Key-value stores (ABI.md, "Key-value stores"): named, durable stores of bytes the module was
 * granted (`key_value_stores`). Keys are 1..1024 bytes, values at most 1 MiB.
 *
 * isolate_kv_open: a store handle >= 0 for this request, or a negative ISOLATE_KV_* code.
 * isolate_kv_get: like isolate_cache_get: 1 found (*value a malloc'd copy followed by a NUL not
 *   counted in *value_len), 0 missing (*value NULL), or a negative code.
 * isolate_kv_set / isolate_kv_delete: 0 (a set is durable once it returned 0; delete answers 0
 *   whether or not the key existed), or a negative code.
 * isolate_kv_exists: 1 or 0, or a negative code.
 * isolate_kv_list: 0 with *page filled in (at most 100 keys starting with prefix, in byte order,
 *   after the key `cursor`; cursor_len 0 starts from the beginning), or a negative code. */
enum {
    ISOLATE_KV_NOT_FOUND = -1,           /* the host's answer to a get of a missing key (isolate_kv_get returns 0) */
    ISOLATE_KV_BAD_KEY = -2,             /* the key is empty or longer than 1024 bytes (prefix/cursor longer) */
    ISOLATE_KV_TOO_LARGE = -3,           /* the value is longer than 1 MiB */
    ISOLATE_KV_NO_SUCH_STORE = -4,       /* not granted this store, or not a handle from isolate_kv_open */
    ISOLATE_KV_STORE_FULL = -5,          /* the store would exceed its size */
    ISOLATE_KV_STORAGE = -6,             /* the store cannot be read or written (the host logs why) */
    ISOLATE_KV_TOO_MANY_OPERATIONS = -7, /* the module's kv_operations were already made */
};
#define ISOLATE_KV_MAX_KEY 1024
#define ISOLATE_KV_MAX_VALUE (1024 * 1024)

typedef struct {
    isolate_str *keys;    /* key_count keys (bytes, not NUL-terminated) */
    size_t key_count;
    isolate_str *cursor;  /* pass to the next isolate_kv_list; NULL on the last page */
    void *data;           /* the buffer the strings point into */
} isolate_kv_page;

int isolate_kv_open(const char *name);
int isolate_kv_get(int store, const void *key, size_t key_len, void **value, size_t *value_len);
int isolate_kv_set(int store, const void *key, size_t key_len, const void *value, size_t value_len);
int isolate_kv_delete(int store, const void *key, size_t key_len);
int isolate_kv_exists(int store, const void *key, size_t key_len);
int isolate_kv_list(int store, const void *prefix, size_t prefix_len, const void *cursor, size_t cursor_len,
                    isolate_kv_page *page);
void isolate_kv_page_free(isolate_kv_page *page);
const char *isolate_kv_error_name(int code); /* "bad_key", ...; "unknown" for another code */
const char *isolate_kv_strerror(int code);   /* a short message, e.g. to log */

#ifdef __cplusplus
}
#endif
#endif
