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

#ifdef __cplusplus
}
#endif
#endif
