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

#ifdef __cplusplus
}
#endif
#endif
