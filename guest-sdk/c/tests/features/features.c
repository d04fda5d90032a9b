/* C SDK API test guest, driven by tests/test_sdks.py and tests/test_guest_io.py. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isolate.h"

static int is(const isolate_request *req, const char *path) { return isolate_str_eq(req->path, path); }

static isolate_response *text(const isolate_str *value) {
    isolate_response *res = isolate_response_new(200);
    if (value) isolate_response_body(res, value->ptr, value->len);
    else isolate_response_body_str(res, "missing");
    return res;
}

/* A cache failure: 500 with "<code>: <message>". */
static isolate_response *cache_error(int code) {
    char text[128];
    snprintf(text, sizeof text, "%d: %s", code, isolate_cache_strerror(code));
    isolate_response *res = isolate_response_new(500);
    isolate_response_body_str(res, text);
    return res;
}

/* A visit counter that outlives the request: each request runs in a fresh isolate. */
static isolate_response *visits(void) {
    void *value;
    size_t len;
    int found = isolate_cache_get("visits", 6, &value, &len);
    if (found < 0) return cache_error(found);
    unsigned long count = found ? strtoul(value, NULL, 10) : 0; /* the copy is NUL-terminated */
    free(value);
    char text[24];
    int n = snprintf(text, sizeof text, "%lu", count + 1);
    int stored = isolate_cache_put("visits", 6, text, (size_t)n, 60000);
    if (stored < 0) return cache_error(stored);
    isolate_response *res = isolate_response_new(200);
    isolate_response_body(res, text, (size_t)n);
    return res;
}

static isolate_response *cache_request(const isolate_request *req) {
    if (is(req, "/cache/put")) { /* the request body under "blob" */
        int stored = isolate_cache_put("blob", 4, req->body.ptr, req->body.len, 60000);
        return stored < 0 ? cache_error(stored) : isolate_response_new(204);
    }
    if (is(req, "/cache/get")) {
        void *value;
        size_t len;
        int found = isolate_cache_get("blob", 4, &value, &len);
        if (found < 0) return cache_error(found);
        isolate_response *res = isolate_response_new(found ? 200 : 404);
        if (found) isolate_response_body(res, value, len);
        else isolate_response_body_str(res, "missing");
        free(value);
        return res;
    }
    if (is(req, "/cache/bad-ttl")) return cache_error(isolate_cache_put("k", 1, "v", 1, 0));
    if (is(req, "/cache/bad-key")) return cache_error(isolate_cache_put("", 0, "v", 1, 60000));
    if (is(req, "/cache/long-key")) {
        static char key[ISOLATE_CACHE_MAX_KEY + 1];
        memset(key, 'k', sizeof key);
        void *value;
        size_t len;
        return cache_error(isolate_cache_get(key, sizeof key, &value, &len));
    }
    return NULL;
}

/* ---------- guest I/O: fetch, kv, variables and secrets, query strings, JSON ---------- */

static int starts(const isolate_request *req, const char *prefix) {
    size_t n = strlen(prefix);
    return req->path.len >= n && memcmp(req->path.ptr, prefix, n) == 0;
}

static isolate_response *answer(int status, const char *body) {
    isolate_response *res = isolate_response_new(status);
    isolate_response_body_str(res, body);
    return res;
}

/* "<code> <name>", e.g. "-2 denied", with " after K" when after >= 0 */
static isolate_response *io_error(int status, int code, const char *name, long after) {
    char text[96];
    if (after >= 0) snprintf(text, sizeof text, "%d %s after %ld", code, name, after);
    else snprintf(text, sizeof text, "%d %s", code, name);
    return answer(status, text);
}

static isolate_response *kv_error(int code) { return io_error(500, code, isolate_kv_error_name(code), -1); }

static long number(const isolate_request *req, const char *name, long fallback) {
    char *text = isolate_query_param(req, name);
    long value = text ? strtol(text, NULL, 10) : fallback;
    free(text);
    return value;
}

static isolate_response *fetch_one(const isolate_request *req) {
    char *url = isolate_query_param(req, "url");
    if (!url) return answer(400, "missing url");
    char *method = isolate_query_param(req, "method"); /* NULL: GET */
    isolate_fetch_request r;
    isolate_fetch_request_init(&r, method, url);
    isolate_fetch_request_header(&r, "x-probe", "features");
    if (req->body.len) {
        r.body = req->body.ptr;
        r.body_len = req->body.len;
    }
    r.redirects = (int)number(req, "redirects", 0);
    r.timeout_ms = (uint32_t)number(req, "timeout_ms", 0);
    isolate_fetch_response got;
    int err = isolate_fetch(&r, &got);
    if (err < 0) return io_error(502, err, isolate_fetch_error_name(err), -1);
    isolate_response *res = isolate_response_new(200);
    char status[16];
    snprintf(status, sizeof status, "%d", got.status);
    isolate_response_header(res, "x-fetch-status", status);
    isolate_response_header_n(res, "x-fetch-url", 11, got.url.ptr, got.url.len);
    const isolate_str *origin = isolate_fetch_header(&got, "x-origin");
    if (origin) isolate_response_header_n(res, "x-fetch-origin", 14, origin->ptr, origin->len);
    else isolate_response_header(res, "x-fetch-origin", "none");
    isolate_response_body(res, got.body.ptr, got.body.len);
    return res;
}

static isolate_response *fetch_many(const isolate_request *req) {
    char *url = isolate_query_param(req, "url");
    if (!url) return answer(400, "missing url");
    long n = number(req, "n", 1);
    isolate_fetch_request r;
    isolate_fetch_request_init(&r, "GET", url);
    for (long done = 0; done < n; done++) {
        isolate_fetch_response got;
        int err = isolate_fetch(&r, &got);
        if (err < 0) return io_error(502, err, isolate_fetch_error_name(err), done);
        isolate_fetch_response_free(&got);
    }
    char text[32];
    snprintf(text, sizeof text, "ok %ld", n);
    return answer(200, text);
}

static isolate_response *kv_request(const isolate_request *req) {
    char *name = isolate_query_param(req, "store");
    if (!name) return answer(400, "missing store");
    int store = isolate_kv_open(name);
    if (is(req, "/kv/count")) { /* n kv_exists calls, to meet the kv_operations limit */
        long n = number(req, "n", 1);
        if (store < 0) return io_error(500, store, isolate_kv_error_name(store), 0);
        for (long done = 0; done < n; done++) {
            int found = isolate_kv_exists(store, "k", 1);
            if (found < 0) return io_error(500, found, isolate_kv_error_name(found), done);
        }
        char text[32];
        snprintf(text, sizeof text, "ok %ld", n);
        return answer(200, text);
    }
    if (store < 0) return kv_error(store);
    if (is(req, "/kv/long-key")) {
        static char key[ISOLATE_KV_MAX_KEY + 1];
        memset(key, 'k', sizeof key);
        void *value;
        size_t len;
        int found = isolate_kv_get(store, key, sizeof key, &value, &len);
        return found < 0 ? kv_error(found) : answer(200, "unexpected");
    }
    if (is(req, "/kv/list")) {
        char *prefix = isolate_query_param(req, "prefix");
        char *cursor = isolate_query_param(req, "cursor");
        isolate_kv_page page;
        int err = isolate_kv_list(store, prefix ? prefix : "", prefix ? strlen(prefix) : 0, cursor,
                                  cursor ? strlen(cursor) : 0, &page);
        if (err < 0) return kv_error(err);
        isolate_response *res = isolate_response_new(200);
        for (size_t i = 0; i < page.key_count; i++) {
            if (i) isolate_response_append(res, "\n", 1);
            isolate_response_append(res, page.keys[i].ptr, page.keys[i].len);
        }
        if (page.cursor) isolate_response_header_n(res, "x-cursor", 8, page.cursor->ptr, page.cursor->len);
        return res;
    }
    char *key = isolate_query_param(req, "key");
    if (!key) return answer(400, "missing key");
    size_t key_len = strlen(key);
    if (is(req, "/kv/set") || is(req, "/kv/big")) {
        const void *value = req->body.ptr;
        size_t len = req->body.len;
        if (is(req, "/kv/big")) {
            len = (size_t)number(req, "size", 0);
            char *big = malloc(len ? len : 1);
            if (!big) abort();
            memset(big, 'x', len);
            value = big;
        }
        int err = isolate_kv_set(store, key, key_len, value, len);
        return err < 0 ? kv_error(err) : answer(200, "ok");
    }
    if (is(req, "/kv/get")) {
        void *value;
        size_t len;
        int found = isolate_kv_get(store, key, key_len, &value, &len);
        if (found < 0) return kv_error(found);
        if (!found) return io_error(404, ISOLATE_KV_NOT_FOUND, isolate_kv_error_name(ISOLATE_KV_NOT_FOUND), -1);
        isolate_response *res = isolate_response_new(200);
        isolate_response_body(res, value, len);
        return res;
    }
    if (is(req, "/kv/delete")) {
        int err = isolate_kv_delete(store, key, key_len);
        return err < 0 ? kv_error(err) : answer(200, "ok");
    }
    if (is(req, "/kv/exists")) {
        int found = isolate_kv_exists(store, key, key_len);
        return found < 0 ? kv_error(found) : answer(200, found ? "1" : "0");
    }
    return NULL;
}

static isolate_response *named(const isolate_request *req, int query) {
    char *name = isolate_query_param(req, "name");
    if (!name) return answer(404, "missing");
    if (!query) {
        const isolate_str *value = isolate_var(req, name);
        return value ? text(value) : answer(404, "missing");
    }
    char *value = isolate_query_param(req, name);
    return value ? answer(200, value) : answer(404, "missing");
}

static isolate_response *json(const isolate_request *req) {
    char *q = isolate_query_param(req, "q");
    char *quoted = q ? isolate_json_quote(q, strlen(q)) : "null";
    size_t n = strlen(quoted) + 16;
    char *body = malloc(n);
    if (!body) abort();
    snprintf(body, n, "{\"echo\":%s}", quoted);
    return isolate_response_json(201, body);
}

/* bench/run.py: N guest-cache reads of one key (the cost of a host call, from a real SDK guest). */
static isolate_response *cache_bench(const isolate_request *req) {
    long n = number(req, "n", 0);
    for (long i = 0; i < n; i++) {
        void *value;
        size_t len;
        int found = isolate_cache_get("bench", 5, &value, &len);
        if (found < 0) return io_error(500, found, isolate_cache_strerror(found), i);
        free(value);
    }
    char text[32];
    snprintf(text, sizeof text, "ok %ld", n);
    return answer(200, text);
}

/* bench/run.py: one outbound call and one key-value read per request. */
static isolate_response *io_bench(const isolate_request *req) {
    char *url = isolate_query_param(req, "url");
    char *name = isolate_query_param(req, "store");
    char *key = isolate_query_param(req, "key");
    if (!url || !name || !key) return answer(400, "url, store and key are required");
    isolate_fetch_request r;
    isolate_fetch_request_init(&r, "GET", url);
    isolate_fetch_response got;
    int err = isolate_fetch(&r, &got);
    if (err < 0) return io_error(502, err, isolate_fetch_error_name(err), 0);
    int store = isolate_kv_open(name);
    if (store < 0) return io_error(500, store, isolate_kv_error_name(store), 0);
    void *value;
    size_t len;
    int found = isolate_kv_get(store, key, strlen(key), &value, &len);
    if (found < 0) return io_error(500, found, isolate_kv_error_name(found), 0);
    isolate_response *res = isolate_response_new(200);
    isolate_response_body(res, got.body.ptr, got.body.len);
    if (found) isolate_response_append(res, value, len);
    return res;
}

isolate_response *isolate_on_request(const isolate_request *req) {
    if (is(req, "/cache/bench")) return cache_bench(req);
    if (is(req, "/bench/io")) return io_bench(req);
    if (is(req, "/fetch")) return fetch_one(req);
    if (is(req, "/fetch-many")) return fetch_many(req);
    if (starts(req, "/kv/")) {
        isolate_response *res = kv_request(req);
        if (res) return res;
    }
    if (is(req, "/secret")) return named(req, 0);
    if (is(req, "/query")) return named(req, 1);
    if (is(req, "/json")) return json(req);
    if (is(req, "/visits")) return visits();
    if (req->path.len > 7 && memcmp(req->path.ptr, "/cache/", 7) == 0) {
        isolate_response *res = cache_request(req);
        if (res) return res;
    }
    if (is(req, "/header")) return text(isolate_header(req, "X-Mixed-Case"));
    if (is(req, "/param")) return text(isolate_param(req, "id"));
    if (is(req, "/var")) return text(isolate_var(req, "k"));
    if (is(req, "/log")) {
        isolate_log(ISOLATE_WARN, "feature log");
        return isolate_response_new(204);
    }
    if (is(req, "/fail")) return NULL; /* the SDK answers 500 */
    if (is(req, "/crash")) abort();
    isolate_response *res = isolate_response_new(404);
    isolate_response_body_str(res, "unknown");
    return res;
}
