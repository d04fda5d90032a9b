/* C SDK API test guest, driven by tests/test_sdks.py. */
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

isolate_response *isolate_on_request(const isolate_request *req) {
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
