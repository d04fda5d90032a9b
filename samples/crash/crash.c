/* crash: fails on request, to show each diagnostic the host returns.
 *   /crash/abort      abort()                       → 500 trap (unreachable)
 *   /crash/loop       an endless loop               → 504 timeout
 *   /crash/oom        malloc until it fails         → 500 memory_limit
 *   /crash/malloc     malloc(1 GiB), unchecked, then writes through the NULL it returned
 *                                                   → 500 memory_limit (malloc told the host it failed)
 *   /crash/stack      unbounded recursion           → 500 stack_overflow
 *   /crash/shadow     unbounded recursion with large locals in linear memory (clang's shadow stack,
 *                     64 KiB from the build)        → 500 trap (memory_out_of_bounds)
 *   /crash/null       write through a wild pointer  → 500 trap (memory_out_of_bounds)
 *   /crash/header     a header value with CR LF     → 502 abi
 *   /crash/exit       exit(3)                       → 500 trap (exit)
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "isolate.h"

static int ends_with(isolate_str s, const char *suffix) {
    size_t n = strlen(suffix);
    return s.len >= n && memcmp(s.ptr + s.len - n, suffix, n) == 0;
}

static volatile uint32_t depth;
static char *volatile kept; /* keeps allocations observable, so the compiler cannot drop them */

/* Scalars only: the frames live on the wasm stack, which the host limits (limits.stack). */
__attribute__((noinline)) static uint32_t recurse(uint32_t n) {
    depth = n;
    return recurse(n + 1) + depth;
}

/* An address-taken array lives on clang's shadow stack in linear memory instead. */
__attribute__((noinline)) static uint32_t recurse_shadow(uint32_t n) {
    volatile char frame[256];
    frame[n % 256] = (char)n;
    return recurse_shadow(n + 1) + frame[0];
}

isolate_response *isolate_on_request(const isolate_request *req) {
    isolate_log(ISOLATE_WARN, "crash sample: about to fail on purpose");
    if (ends_with(req->path, "/abort")) abort();
    if (ends_with(req->path, "/loop")) for (volatile int i = 0;; i++) {}
    if (ends_with(req->path, "/oom")) {
        for (;;) {
            /* Not written to: a memset of each MiB made this 19 ms, and 100+ ms for a guest worker
             * that waits for a busy CPU, so the 100 ms timeout could fire before the memory limit. */
            char *p = malloc(1 << 20);
            if (!p) abort();
            kept = p;
        }
    }
    if (ends_with(req->path, "/malloc")) {
        kept = malloc((size_t)1 << 30);
        memset(kept, 1, (size_t)1 << 30); /* from address 0: runs off the end of memory */
    }
    if (ends_with(req->path, "/stack")) recurse(0);
    if (ends_with(req->path, "/shadow")) recurse_shadow(0);
    if (ends_with(req->path, "/null")) *(volatile int *)(uintptr_t)0xfffffff0u = 1;
    if (ends_with(req->path, "/exit")) exit(3);
    isolate_response *res = isolate_response_new(200);
    if (ends_with(req->path, "/header")) {
        isolate_response_header(res, "x-evil", "a\r\nset-cookie: stolen=1");
        return res;
    }
    isolate_response_body_str(res, "try /crash/abort, /crash/loop, /crash/oom, /crash/malloc, /crash/stack, "
                                   "/crash/shadow, /crash/null, /crash/header or /crash/exit\n");
    return res;
}
