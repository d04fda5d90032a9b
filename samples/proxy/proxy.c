/* proxy: a caching proxy in front of one origin. GET /proxy/<rest> fetches <origin><rest> (the
 * deployment variable `origin`, e.g. "http://127.0.0.1:8787"), upper-cases the origin's body as
 * its "transform", and answers it as JSON with `cache-control: public, max-age=30`, so the host's
 * response cache serves repeats without running the module (or calling the origin) again. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isolate.h"

#define ROUTE "/proxy" /* the route is "/proxy/...": the guest sees the whole path */

isolate_response *isolate_on_request(const isolate_request *req) {
    const isolate_str *origin = isolate_var(req, "origin");
    if (!origin) return isolate_response_json(500, "{\"error\":\"no origin variable\"}");

    /* <origin><rest of the path>[?<query>]; the rest begins with "/" ("/proxy" alone asks for "/") */
    isolate_str rest = req->path;
    if (rest.len >= sizeof ROUTE - 1 && memcmp(rest.ptr, ROUTE, sizeof ROUTE - 1) == 0) {
        rest.ptr += sizeof ROUTE - 1;
        rest.len -= sizeof ROUTE - 1;
    }
    if (!rest.len) rest = (isolate_str){"/", 1};
    size_t origin_len = origin->len;
    while (origin_len && origin->ptr[origin_len - 1] == '/') origin_len--; /* "http://o/" + "/x" */
    size_t url_len = origin_len + rest.len + (req->query.len ? 1 + req->query.len : 0);
    char *url = malloc(url_len + 1);
    if (!url) abort();
    snprintf(url, url_len + 1, "%.*s%.*s%s%.*s", (int)origin_len, origin->ptr, (int)rest.len, rest.ptr,
             req->query.len ? "?" : "", (int)req->query.len, req->query.ptr);

    isolate_fetch_request fetch;
    isolate_fetch_request_init(&fetch, "GET", url); /* GET for HEAD too: the host drops a HEAD's body */
    fetch.redirects = 5;
    isolate_fetch_response got;
    int err = isolate_fetch(&fetch, &got);
    if (err == 0 && (got.status < 200 || got.status > 599)) err = ISOLATE_FETCH_PROTOCOL; /* not an answer we may pass on */
    if (err < 0) {
        char text[96];
        snprintf(text, sizeof text, "{\"error\":\"%s\",\"code\":%d}", isolate_fetch_error_name(err), err);
        isolate_log(ISOLATE_WARN, isolate_fetch_strerror(err));
        return isolate_response_json(502, text);
    }

    /* the transform: ASCII letters upper-cased (UTF-8 sequences are left alone) */
    char *upper = malloc(got.body.len ? got.body.len : 1);
    if (!upper) abort();
    for (size_t i = 0; i < got.body.len; i++) {
        char c = got.body.ptr[i];
        upper[i] = c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
    }
    char *body = isolate_json_quote(upper, got.body.len);
    char *final_url = isolate_json_quote(got.url.ptr, got.url.len);
    size_t cap = strlen(body) + strlen(final_url) + 96;
    char *json = malloc(cap);
    if (!json) abort();
    snprintf(json, cap, "{\"status\":%d,\"url\":%s,\"length\":%zu,\"body\":%s}", got.status, final_url,
             got.body.len, body);

    isolate_response *res = isolate_response_json(got.status, json);
    isolate_response_header(res, "cache-control", "public, max-age=30");
    isolate_response_header(res, "x-proxied-by", "isolate-proxy");
    return res;
}
