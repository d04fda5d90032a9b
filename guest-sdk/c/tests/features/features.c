/* C SDK API test guest, driven by tests/test_sdks.py. */
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

isolate_response *isolate_on_request(const isolate_request *req) {
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
