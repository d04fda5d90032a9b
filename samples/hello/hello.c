/* hello: the C SDK's smallest useful handler. GET /hello/:name greets by name, with the greeting
 * taken from the deployment variable `greeting` (default "Hello"). */
#include <stdio.h>
#include <stdlib.h>

#include "isolate.h"

isolate_response *isolate_on_request(const isolate_request *req) {
    const isolate_str *name = isolate_param(req, "name");
    const isolate_str *greeting = isolate_var(req, "greeting");
    char text[512];
    int n = snprintf(text, sizeof text, "%.*s, %.*s! (from C, region %.*s, client in %.*s)\n",
                     greeting ? (int)greeting->len : 5, greeting ? greeting->ptr : "Hello",
                     name ? (int)name->len : 5, name ? name->ptr : "world",
                     (int)req->region.len, req->region.ptr,
                     (int)req->client_region.len, req->client_region.ptr);
    isolate_response *res = isolate_response_new(200);
    isolate_response_header(res, "content-type", "text/plain; charset=utf-8");
    isolate_response_body(res, text, n < (int)sizeof text ? (size_t)n : sizeof text - 1);
    isolate_log(ISOLATE_INFO, "hello handled a request");
    return res;
}
