/* Out-of-memory test guest for the C SDK, driven by tests/test_sdk_oom.py. */
#include <stdlib.h>
#include <string.h>

#include "isolate.h"

static char *volatile kept; /* the compiler may not assume a malloc succeeds, nor drop it */

isolate_response *isolate_on_request(const isolate_request *req) {
    if (isolate_str_eq(req->path, "/alloc")) { /* unchecked: the writes go through the NULL returned */
        kept = malloc((size_t)1 << 30);
        memset(kept, 1, (size_t)1 << 30);
    }
    if (isolate_str_eq(req->path, "/recover")) { /* checked: a NULL the handler answers for */
        kept = malloc((size_t)1 << 30);
        if (!kept) return isolate_response_new(503);
    }
    return isolate_response_new(200);
}
