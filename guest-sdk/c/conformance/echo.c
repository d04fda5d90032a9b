/* The conformance echo guest (contract: ../../abi/generate.py), written with the public C SDK API. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isolate.h"

static void echo_pair(isolate_response *res, const char *prefix, isolate_pair p) {
    size_t plen = strlen(prefix);
    char *name = malloc(plen + p.name.len);
    memcpy(name, prefix, plen);
    memcpy(name + plen, p.name.ptr, p.name.len);
    isolate_response_header_n(res, name, plen + p.name.len, p.value.ptr, p.value.len);
}

isolate_response *isolate_on_request(const isolate_request *req) {
    const isolate_str *status = isolate_header(req, "x-status");
    isolate_response *res = isolate_response_new(status ? atoi(isolate_str_dup(*status)) : 200);
    isolate_response_header_n(res, "x-method", 8, req->method.ptr, req->method.len);
    isolate_response_header_n(res, "x-path", 6, req->path.ptr, req->path.len);
    isolate_response_header_n(res, "x-query", 7, req->query.ptr, req->query.len);
    isolate_response_header_n(res, "x-region", 8, req->region.ptr, req->region.len);
    isolate_response_header_n(res, "x-client-region", 15, req->client_region.ptr, req->client_region.len);
    isolate_response_header_n(res, "x-request-id", 12, req->request_id.ptr, req->request_id.len);
    for (size_t i = 0; i < req->param_count; i++) echo_pair(res, "x-param-", req->params[i]);
    for (size_t i = 0; i < req->var_count; i++) echo_pair(res, "x-var-", req->vars[i]);
    for (size_t i = 0; i < req->header_count; i++) echo_pair(res, "x-echo-", req->headers[i]);
    char count[24];
    snprintf(count, sizeof count, "%zu", req->header_count);
    isolate_response_header(res, "x-header-count", count);
    isolate_response_body(res, req->body.ptr, req->body.len);
    return res;
}
