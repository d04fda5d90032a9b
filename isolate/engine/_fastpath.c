/* isolate.engine._fastpath: one native call per request, and the `isolate` host functions that
 * need no Python until they must (ABI.md, "Host functions": log, cache_get, cache_put).
 *
 * The per-request work (new store, limits, deadline, instantiate, alloc, copy in, handle, copy out,
 * delete) is a dozen ctypes calls on the fallback path (engine/_isolate.py), each ~0.5-1 µs plus
 * a GIL release and re-acquire. Here it is one call that releases the GIL once. The wasmtime C API
 * is not linked: `init` receives the addresses of the functions of the libwasmtime that the
 * `wasmtime` wheel already loaded (ctypes knows them), so this file needs only Python's headers
 * and builds with any C compiler. The struct layouts below are wasmtime 50's (pyproject.toml pins
 * one major); `tests/test_fastpath.py` checks them against wasmtime-py's own bindings.
 *
 * The envelope codec here (encode_request, decode_response) covers the common case and declines the
 * rest to abi/_envelope.py, the reference.
 *
 * Nothing here decides anything: errors and traps are handed back as raw pointers for the one
 * translator in _isolate.py, and the guest cache and log capture stay Python objects.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* ---- wasmtime 50 C API: the layouts and signatures used (crates/c-api/include/wasmtime/) ---- */

typedef union {
    int32_t i32;
    int64_t i64;
    float f32;
    double f64;
    uint8_t v128[16];
    void *funcref;
} wt_val_raw;

typedef struct {
    uint64_t store_id;
    void *private_;
} wt_func; /* also the layout of wasmtime_instance_t */

typedef struct {
    uint8_t kind;
    union {
        wt_func func;
        uint8_t bytes[24]; /* the largest member: global, table, memory */
    } of;
} wt_extern;

_Static_assert(sizeof(wt_val_raw) == 16, "wasmtime_val_raw_t is 16 bytes");
_Static_assert(sizeof(wt_extern) == 32 && offsetof(wt_extern, of) == 8, "wasmtime_extern_t layout");

enum { EXTERN_FUNC = 0, EXTERN_MEMORY = 3 };

typedef void *(*store_new_fn)(void *engine, void *data, void (*finalizer)(void *));
typedef void *(*store_context_fn)(void *store);
typedef void (*store_limiter_fn)(void *store, int64_t memory, int64_t table_elements, int64_t instances,
                                 int64_t tables, int64_t memories);
typedef void (*store_delete_fn)(void *store);
typedef void (*set_epoch_deadline_fn)(void *ctx, uint64_t ticks);
typedef void *(*context_set_wasi_fn)(void *ctx, void *wasi_config);
typedef void (*wasi_config_delete_fn)(void *wasi_config);
typedef void *(*instantiate_pre_fn)(void *pre, void *ctx, wt_func *instance, void **trap);
typedef bool (*export_get_fn)(void *ctx, const wt_func *instance, const char *name, size_t len, wt_extern *out);
typedef void *(*call_unchecked_fn)(void *ctx, const void *func, wt_val_raw *args, size_t count, void **trap);
typedef uint8_t *(*memory_data_fn)(const void *ctx, const void *memory);
typedef size_t (*memory_data_size_fn)(const void *ctx, const void *memory);
typedef void *(*caller_context_fn)(void *caller);
typedef bool (*caller_export_get_fn)(void *caller, const char *name, size_t len, wt_extern *out);
typedef void *(*trap_new_fn)(const char *message, size_t len);
typedef void *(*host_callback)(void *env, void *caller, wt_val_raw *args, size_t count);
typedef void *(*define_unchecked_fn)(void *linker, const char *module, size_t module_len, const char *name,
                                     size_t name_len, const void *functype, host_callback callback, void *env,
                                     void (*finalizer)(void *));
typedef void (*increment_epoch_fn)(void *engine);
typedef void *(*engine_clone_fn)(void *engine);
typedef void (*engine_delete_fn)(void *engine);

static struct {
    store_new_fn store_new;
    store_context_fn store_context;
    store_limiter_fn store_limiter;
    store_delete_fn store_delete;
    set_epoch_deadline_fn set_epoch_deadline;
    context_set_wasi_fn context_set_wasi;
    wasi_config_delete_fn wasi_config_delete;
    instantiate_pre_fn instantiate_pre;
    export_get_fn export_get;
    call_unchecked_fn call_unchecked;
    memory_data_fn memory_data;
    memory_data_size_fn memory_data_size;
    caller_context_fn caller_context;
    caller_export_get_fn caller_export_get;
    trap_new_fn trap_new;
    define_unchecked_fn define_unchecked;
    increment_epoch_fn increment_epoch;
    engine_clone_fn engine_clone;
    engine_delete_fn engine_delete;
} api;

static const char *const API_NAMES[] = {
    "wasmtime_store_new", "wasmtime_store_context", "wasmtime_store_limiter", "wasmtime_store_delete",
    "wasmtime_context_set_epoch_deadline", "wasmtime_context_set_wasi", "wasi_config_delete",
    "wasmtime_instance_pre_instantiate", "wasmtime_instance_export_get", "wasmtime_func_call_unchecked",
    "wasmtime_memory_data", "wasmtime_memory_data_size", "wasmtime_caller_context",
    "wasmtime_caller_export_get", "wasmtime_trap_new", "wasmtime_linker_define_func_unchecked",
    "wasmtime_engine_increment_epoch", "wasmtime_engine_clone", "wasm_engine_delete",
};
#define API_COUNT (sizeof(API_NAMES) / sizeof(API_NAMES[0]))
_Static_assert(sizeof(api) == API_COUNT * sizeof(void *), "one address per API name");

/* Python objects kept from `init`: the shutdown module (its `stopping`), the log levels, and the
 * function that logs a host function's failure (one logger, Python's). */
static PyObject *shutdown_module, *log_levels, *report_failure;
static PyObject *s_stopping, *s_full, *s_drop, *s_add, *s_get, *s_put, *s_log_stream, *s_info, *s_abi_error;

/* ---- per-request state, for the host functions of the request running on this thread ---- */

typedef struct {
    wt_extern memory; /* the instance's `memory` export, once looked up */
    bool has_memory;
    /* The request's capture: borrowed when the caller of `invoke` made it; owned when `invoke` was
     * given its arguments instead (`capture_args`) and made it on first use (NULL until then). */
    PyObject *capture;
    PyObject *capture_args;
    PyObject *cache; /* borrowed: the caller of `invoke` holds them for the whole call */
    PyObject *namespace_;
} request_state;

static PyObject *capture_type; /* _output.Capture, from init: made on first use by `state_capture` */

/* The request's capture, made now if it was left for its first use: most guests never log, and a
 * Capture costs ~0.2 µs to make and finish. GIL held; NULL with an error set if it cannot be made. */
static PyObject *state_capture(request_state *state) {
    if (state->capture == NULL) {
        if (capture_type == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "_fastpath.init was given no capture type");
            return NULL;
        }
        state->capture = PyObject_Call(capture_type, state->capture_args, NULL);
    }
    return state->capture;
}

static __thread request_state *current;

/* Statuses `invoke` returns; _isolate.py turns every one but OK into an error, in one place. */
enum {
    OK = 0,
    STOPPING = 1,       /* shutdown() was called before the guest started */
    WASI_FAILED = 2,    /* a = error */
    FAILED = 3,         /* a = error, b = trap; phase in the tuple */
    LOST_EXPORT = 4,    /* an ABI export vanished after instantiation */
    BAD_ALLOC = 5,      /* a = pointer isolate_alloc returned, b = the size asked for */
    TOO_LARGE = 6,      /* b = response length */
    BAD_RESPONSE = 7,   /* a = pointer, b = length */
    OVER_BUDGET = 8,    /* the memory budget refused the reservation; a = bytes reserved then */
};
enum { PHASE_INSTANTIATE = 0, PHASE_INITIALIZE = 1, PHASE_ALLOC = 2, PHASE_HANDLE = 3 };

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* the clock of time.perf_counter() on Linux */
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int read_u64(PyObject *arg, uint64_t *out) {
    *out = PyLong_AsUnsignedLongLong(arg);
    return (*out == (uint64_t)-1 && PyErr_Occurred()) ? -1 : 0;
}

static int read_i64(PyObject *arg, int64_t *out) {
    *out = PyLong_AsLongLong(arg);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* ---- the ABI v1 envelopes (abi/_envelope.py), for the common case only -------------------------
 * Python's `encode_request` and `decode_response` are the reference: these produce the same bytes
 * and the same values for the plain types a request and a valid response carry, and decline (the
 * caller then runs the Python ones) on anything else, so every error message stays in one place. */

enum { CODEC_OK = 0, CODEC_DECLINE = 1, CODEC_ERROR = -1 };

typedef struct {
    uint8_t *data;
    size_t len, cap;
    uint8_t room[2048]; /* most request envelopes fit without a heap allocation */
} wbuf;

static void wb_init(wbuf *b) {
    b->data = b->room;
    b->len = 0;
    b->cap = sizeof b->room;
}

static void wb_free(wbuf *b) {
    if (b->data != b->room)
        PyMem_RawFree(b->data);
}

static int wb_reserve(wbuf *b, size_t extra) {
    if (b->len + extra <= b->cap)
        return CODEC_OK;
    size_t cap = b->cap * 2;
    while (cap < b->len + extra)
        cap *= 2;
    uint8_t *data = b->data == b->room ? PyMem_RawMalloc(cap) : PyMem_RawRealloc(b->data, cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return CODEC_ERROR;
    }
    if (b->data == b->room)
        memcpy(data, b->room, b->len);
    b->data = data;
    b->cap = cap;
    return CODEC_OK;
}

/* A msgpack head: `small` is the fix* tag (or 0 when there is none), then the 8/16/32-bit tags. */
static int wb_head(wbuf *b, size_t n, uint8_t small, size_t small_max, uint8_t t8, uint8_t t16, uint8_t t32) {
    if (wb_reserve(b, 5) < 0)
        return CODEC_ERROR;
    uint8_t *p = b->data + b->len;
    if (small && n <= small_max) {
        p[0] = (uint8_t)(small | n);
        b->len += 1;
    } else if (t8 && n <= 0xff) {
        p[0] = t8;
        p[1] = (uint8_t)n;
        b->len += 2;
    } else if (n <= 0xffff) {
        p[0] = t16;
        p[1] = (uint8_t)(n >> 8);
        p[2] = (uint8_t)n;
        b->len += 3;
    } else if (n <= UINT32_MAX) {
        p[0] = t32;
        p[1] = (uint8_t)(n >> 24);
        p[2] = (uint8_t)(n >> 16);
        p[3] = (uint8_t)(n >> 8);
        p[4] = (uint8_t)n;
        b->len += 5;
    } else {
        return CODEC_DECLINE;
    }
    return CODEC_OK;
}

static int wb_bytes(wbuf *b, const void *data, size_t n) {
    if (wb_reserve(b, n) < 0)
        return CODEC_ERROR;
    memcpy(b->data + b->len, data, n);
    b->len += n;
    return CODEC_OK;
}

static int put_raw_str(wbuf *b, const char *text, size_t n) {
    int rc = wb_head(b, n, 0xa0, 31, 0xd9, 0xda, 0xdb);
    return rc ? rc : wb_bytes(b, text, n);
}

/* An exact str as msgpack str (Packer(use_bin_type=True)); one that is not UTF-8-encodable declines. */
static int put_str(wbuf *b, PyObject *s) {
    if (!PyUnicode_CheckExact(s))
        return CODEC_DECLINE;
    Py_ssize_t n;
    const char *text = PyUnicode_AsUTF8AndSize(s, &n);
    if (text == NULL) {
        PyErr_Clear();
        return CODEC_DECLINE;
    }
    return put_raw_str(b, text, (size_t)n);
}

static int put_str_map(wbuf *b, PyObject *map) {
    if (!PyDict_CheckExact(map))
        return CODEC_DECLINE;
    int rc = wb_head(b, (size_t)PyDict_GET_SIZE(map), 0x80, 15, 0, 0xde, 0xdf);
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (rc == CODEC_OK && PyDict_Next(map, &pos, &key, &value)) {
        rc = put_str(b, key);
        if (rc == CODEC_OK)
            rc = put_str(b, value);
    }
    return rc;
}

static int put_headers(wbuf *b, PyObject *headers) {
    if (!PyList_CheckExact(headers) && !PyTuple_CheckExact(headers))
        return CODEC_DECLINE;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(headers);
    int rc = wb_head(b, (size_t)n, 0x90, 15, 0, 0xdc, 0xdd);
    for (Py_ssize_t i = 0; rc == CODEC_OK && i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(headers, i);
        if ((!PyTuple_CheckExact(pair) && !PyList_CheckExact(pair)) || PySequence_Fast_GET_SIZE(pair) != 2)
            return CODEC_DECLINE;
        rc = wb_head(b, 2, 0x90, 15, 0, 0xdc, 0xdd);
        if (rc == CODEC_OK)
            rc = put_str(b, PySequence_Fast_GET_ITEM(pair, 0));
        if (rc == CODEC_OK)
            rc = put_str(b, PySequence_Fast_GET_ITEM(pair, 1));
    }
    return rc;
}

static PyObject *s_method, *s_path, *s_query, *s_headers, *s_body, *s_params, *s_region, *s_client_region,
    *s_request_id;

/* The request envelope of `request` (an abi.Request) and `variables`, as encode_request writes it. */
static int encode_envelope(wbuf *b, PyObject *request, PyObject *variables) {
    PyObject *names[] = {s_method, s_path, s_query, s_headers, s_body, s_params, s_region, s_client_region,
                         s_request_id};
    PyObject *v[9] = {NULL};
    int rc = CODEC_OK;
    for (int i = 0; i < 9 && rc == CODEC_OK; i++)
        if ((v[i] = PyObject_GetAttr(request, names[i])) == NULL)
            rc = CODEC_ERROR;
    if (rc == CODEC_OK) {
        PyObject *client_region = v[7];
        int set = client_region == Py_None ? 0 : PyObject_IsTrue(client_region);
        if (set < 0)
            rc = CODEC_ERROR;
        else if (!set)
            client_region = v[6];
        /* The keys in encode_request's order: guests may rely on none, but the bytes stay equal. */
        static const char *const keys[] = {"method", "path", "query", "headers", "body", "params", "vars",
                                           "region", "client_region", "request_id"};
        if (rc == CODEC_OK)
            rc = wb_head(b, 10, 0x80, 15, 0, 0xde, 0xdf);
        for (int k = 0; k < 10 && rc == CODEC_OK; k++) {
            rc = put_raw_str(b, keys[k], strlen(keys[k]));
            if (rc != CODEC_OK)
                break;
            switch (k) {
            case 3:
                rc = put_headers(b, v[3]);
                break;
            case 4:
                if (!PyBytes_CheckExact(v[4])) {
                    rc = CODEC_DECLINE;
                    break;
                }
                rc = wb_head(b, (size_t)PyBytes_GET_SIZE(v[4]), 0, 0, 0xc4, 0xc5, 0xc6);
                if (rc == CODEC_OK)
                    rc = wb_bytes(b, PyBytes_AS_STRING(v[4]), (size_t)PyBytes_GET_SIZE(v[4]));
                break;
            case 5:
                rc = put_str_map(b, v[5]);
                break;
            case 6:
                rc = put_str_map(b, variables);
                break;
            case 7:
                rc = put_str(b, v[6]);
                break;
            case 8:
                rc = put_str(b, client_region);
                break;
            case 9:
                rc = put_str(b, v[8]);
                break;
            default: /* method, path, query */
                rc = put_str(b, v[k]);
            }
        }
    }
    for (int i = 0; i < 9; i++)
        Py_XDECREF(v[i]);
    return rc;
}

PyDoc_STRVAR(encode_doc, "encode_request(request, variables) -> bytes | None\n\n"
"The request envelope abi.encode_request writes, or None where this path declines (the caller\n"
"encodes in Python then: types other than exact str, bytes, dict, list and tuple).");

static PyObject *encode_request(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "encode_request takes 2 arguments");
        return NULL;
    }
    wbuf b;
    wb_init(&b);
    int rc = encode_envelope(&b, args[0], args[1]);
    PyObject *out = rc == CODEC_OK      ? PyBytes_FromStringAndSize((const char *)b.data, (Py_ssize_t)b.len)
                    : rc == CODEC_ERROR ? NULL
                                        : Py_NewRef(Py_None);
    wb_free(&b);
    return out;
}

/* Reading a response envelope: any surprise declines (the Python decoder then names it). */
typedef struct {
    const uint8_t *p, *end;
} rbuf;

static bool rb_take(rbuf *r, size_t n, const uint8_t **out) {
    if ((size_t)(r->end - r->p) < n)
        return false;
    *out = r->p;
    r->p += n;
    return true;
}

static bool rb_uint(rbuf *r, size_t width, uint64_t *out) {
    const uint8_t *p;
    if (!rb_take(r, width, &p))
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < width; i++)
        v = v << 8 | p[i];
    *out = v;
    return true;
}

/* A str or bin head: its length, and whether it was a str. */
static bool rb_text(rbuf *r, const uint8_t **data, size_t *len, bool *is_str) {
    const uint8_t *tag;
    uint64_t n;
    if (!rb_take(r, 1, &tag))
        return false;
    uint8_t t = *tag;
    *is_str = true;
    size_t width = 0;
    if ((t & 0xe0) == 0xa0) {
        n = t & 0x1f;
    } else if (t >= 0xd9 && t <= 0xdb) { /* str 8/16/32 */
        width = (size_t)1 << (t - 0xd9);
    } else if (t >= 0xc4 && t <= 0xc6) { /* bin 8/16/32 */
        width = (size_t)1 << (t - 0xc4);
        *is_str = false;
    } else {
        return false;
    }
    if (width && !rb_uint(r, width, &n))
        return false;
    if (!rb_take(r, (size_t)n, data))
        return false;
    *len = (size_t)n;
    return true;
}

static bool rb_array(rbuf *r, uint64_t *n) {
    const uint8_t *tag;
    if (!rb_take(r, 1, &tag))
        return false;
    if ((*tag & 0xf0) == 0x90) {
        *n = *tag & 0x0f;
        return true;
    }
    return (*tag == 0xdc && rb_uint(r, 2, n)) || (*tag == 0xdd && rb_uint(r, 4, n));
}

static bool rb_status(rbuf *r, int64_t *out) {
    const uint8_t *tag;
    uint64_t u;
    if (!rb_take(r, 1, &tag))
        return false;
    uint8_t t = *tag;
    if (t <= 0x7f) {
        *out = t;
        return true;
    }
    static const uint8_t widths[] = {1, 2, 4, 8};
    if (t >= 0xcc && t <= 0xcf && rb_uint(r, widths[t - 0xcc], &u)) { /* uint 8..64 */
        *out = u > 1000 ? 1000 : (int64_t)u;
        return true;
    }
    if (t >= 0xd0 && t <= 0xd3 && rb_uint(r, widths[t - 0xd0], &u)) { /* int 8..64: sign-extend */
        unsigned bits = widths[t - 0xd0] * 8;
        *out = bits == 64 ? (int64_t)u : (int64_t)(u << (64 - bits)) >> (64 - bits);
        return true;
    }
    return false;
}

static bool is_token(const uint8_t *s, size_t n) {
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        if (!alnum && (c == 0 || strchr("!#$%&'*+-.^_`|~", c) == NULL))
            return false;
    }
    return true;
}

/* A header value: HTAB, visible ASCII and SP, and (as latin-1 text) 0x80-0xff. */
static bool is_field_value(const uint8_t *s, size_t n, bool ascii_only) {
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (c >= 0x80 ? ascii_only : !(c == '\t' || (c >= 0x20 && c != 0x7f)))
            return false;
    }
    return true;
}

/* (status, headers, body) from a response envelope, or None to decline. */
static PyObject *decode_envelope(const uint8_t *data, size_t size) {
    rbuf r = {data, data + size};
    const uint8_t *tag;
    uint64_t entries;
    if (!rb_take(&r, 1, &tag))
        Py_RETURN_NONE;
    if ((*tag & 0xf0) == 0x80)
        entries = *tag & 0x0f;
    else if (!((*tag == 0xde && rb_uint(&r, 2, &entries)) || (*tag == 0xdf && rb_uint(&r, 4, &entries))))
        Py_RETURN_NONE;
    int64_t status = -1;
    bool seen_status = false, seen_headers = false, seen_body = false;
    PyObject *headers = NULL, *body = NULL;
    for (uint64_t e = 0; e < entries; e++) {
        const uint8_t *key;
        size_t key_len;
        bool is_str;
        if (!rb_text(&r, &key, &key_len, &is_str) || !is_str)
            goto decline;
        if (key_len == 6 && memcmp(key, "status", 6) == 0 && !seen_status) {
            seen_status = true;
            if (!rb_status(&r, &status) || status < 200 || status > 599)
                goto decline;
        } else if (key_len == 7 && memcmp(key, "headers", 7) == 0 && !seen_headers) {
            seen_headers = true;
            uint64_t count;
            if (!rb_array(&r, &count) || count > 256)
                goto decline;
            headers = PyTuple_New((Py_ssize_t)count);
            if (headers == NULL)
                goto error;
            for (uint64_t i = 0; i < count; i++) {
                uint64_t two;
                const uint8_t *name, *value;
                size_t name_len, value_len;
                bool name_str, value_str;
                if (!rb_array(&r, &two) || two != 2 || !rb_text(&r, &name, &name_len, &name_str) ||
                    !rb_text(&r, &value, &value_len, &value_str) || !is_token(name, name_len) ||
                    !is_field_value(value, value_len, value_str))
                    goto decline;
                /* bin decodes as latin-1, as the Python decoder does; a str here is ASCII */
                PyObject *pair = Py_BuildValue("(NN)", PyUnicode_DecodeLatin1((const char *)name, name_len, NULL),
                                               PyUnicode_DecodeLatin1((const char *)value, value_len, NULL));
                if (pair == NULL)
                    goto error;
                PyTuple_SET_ITEM(headers, (Py_ssize_t)i, pair);
            }
        } else if (key_len == 4 && memcmp(key, "body", 4) == 0 && !seen_body) {
            seen_body = true;
            const uint8_t *text;
            size_t len;
            if (r.p < r.end && *r.p == 0xc0) {
                r.p++;
                body = PyBytes_FromStringAndSize(NULL, 0);
            } else if (!rb_text(&r, &text, &len, &is_str)) {
                goto decline;
            } else {
                if (is_str) { /* a str body must be valid UTF-8 (strict, as msgpack decodes it) */
                    PyObject *check = PyUnicode_DecodeUTF8((const char *)text, (Py_ssize_t)len, NULL);
                    if (check == NULL) {
                        PyErr_Clear();
                        goto decline;
                    }
                    Py_DECREF(check);
                }
                body = PyBytes_FromStringAndSize((const char *)text, (Py_ssize_t)len);
            }
            if (body == NULL)
                goto error;
        } else {
            goto decline;
        }
    }
    if (!seen_status || r.p != r.end)
        goto decline;
    if (headers == NULL && (headers = PyTuple_New(0)) == NULL)
        goto error;
    if (body == NULL && (body = PyBytes_FromStringAndSize(NULL, 0)) == NULL)
        goto error;
    return Py_BuildValue("(LNN)", (long long)status, headers, body);
decline:
    Py_XDECREF(headers);
    Py_XDECREF(body);
    Py_RETURN_NONE;
error:
    Py_XDECREF(headers);
    Py_XDECREF(body);
    return NULL;
}

PyDoc_STRVAR(decode_doc, "decode_response(data) -> (status, headers, body) | None\n\n"
"What abi.decode_response returns for a valid response envelope, or None where this path declines\n"
"(anything the Python decoder must judge or name: invalid envelopes, unknown keys, non-ASCII str).");

static PyObject *decode_response(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = decode_envelope(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return out;
}

PyDoc_STRVAR(construct_doc, "construct(cls, *values) -> instance\n\n"
"An instance of the slots dataclass `cls` with its fields (`cls.__slots__`, in order) set to\n"
"`values`, without running __init__: a frozen dataclass sets each field through object.__setattr__\n"
"(~0.1 µs apiece), and a Response and a log record are made per request. No default is filled in.");

static PyObject *s_slots;

static PyObject *construct(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs < 1 || !PyType_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "construct takes a class and its field values");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)args[0];
    PyObject *slots = PyObject_GetAttr(args[0], s_slots);
    if (slots == NULL)
        return NULL;
    if (!PyTuple_Check(slots) || PyTuple_GET_SIZE(slots) != nargs - 1) {
        Py_DECREF(slots);
        PyErr_Format(PyExc_TypeError, "construct: %s takes %zd values", type->tp_name,
                     PyTuple_Check(slots) ? PyTuple_GET_SIZE(slots) : (Py_ssize_t)-1);
        return NULL;
    }
    PyObject *obj = type->tp_alloc(type, 0);
    for (Py_ssize_t i = 1; obj != NULL && i < nargs; i++) {
        if (PyObject_GenericSetAttr(obj, PyTuple_GET_ITEM(slots, i - 1), args[i]) < 0)
            Py_CLEAR(obj);
    }
    Py_DECREF(slots);
    return obj;
}

/* ---- the memory budget (engine/_budget.py) --------------------------------------------------
 * Its counter lives here when the extension is built, so `invoke` reserves a request's memory and
 * releases it without a Python call or lock (two of them took ~0.3 µs of every request). */

typedef struct {
    pthread_mutex_t lock;
    int64_t total, in_use, peak, refused;
} budget;

static bool budget_take(budget *b, int64_t size, int64_t *in_use) {
    pthread_mutex_lock(&b->lock);
    bool ok = b->in_use + size <= b->total;
    if (ok) {
        b->in_use += size;
        if (b->in_use > b->peak)
            b->peak = b->in_use;
    } else {
        b->refused++;
    }
    *in_use = b->in_use;
    pthread_mutex_unlock(&b->lock);
    return ok;
}

static void budget_give(budget *b, int64_t size) {
    pthread_mutex_lock(&b->lock);
    b->in_use -= size;
    pthread_mutex_unlock(&b->lock);
}

static void budget_free(PyObject *capsule) {
    budget *b = PyCapsule_GetPointer(capsule, "isolate.budget");
    if (b != NULL) {
        pthread_mutex_destroy(&b->lock);
        PyMem_RawFree(b);
    }
}

static PyObject *budget_new(PyObject *self, PyObject *arg) {
    (void)self;
    int64_t total;
    if (read_i64(arg, &total) < 0)
        return NULL;
    budget *b = PyMem_RawCalloc(1, sizeof *b);
    if (b == NULL)
        return PyErr_NoMemory();
    pthread_mutex_init(&b->lock, NULL);
    b->total = total;
    PyObject *capsule = PyCapsule_New(b, "isolate.budget", budget_free);
    if (capsule == NULL) {
        pthread_mutex_destroy(&b->lock);
        PyMem_RawFree(b);
    }
    return capsule;
}

static PyObject *budget_reserve(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    int64_t size, in_use;
    budget *b = nargs == 2 ? PyCapsule_GetPointer(args[0], "isolate.budget") : NULL;
    if (b == NULL || read_i64(args[1], &size) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "budget_reserve(budget, size)");
        return NULL;
    }
    return PyBool_FromLong(budget_take(b, size, &in_use));
}

static PyObject *budget_release(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    int64_t size;
    budget *b = nargs == 2 ? PyCapsule_GetPointer(args[0], "isolate.budget") : NULL;
    if (b == NULL || read_i64(args[1], &size) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "budget_release(budget, size)");
        return NULL;
    }
    budget_give(b, size);
    Py_RETURN_NONE;
}

static PyObject *budget_stats(PyObject *self, PyObject *capsule) {
    (void)self;
    budget *b = PyCapsule_GetPointer(capsule, "isolate.budget");
    if (b == NULL)
        return NULL;
    pthread_mutex_lock(&b->lock);
    int64_t total = b->total, in_use = b->in_use, peak = b->peak, refused = b->refused;
    pthread_mutex_unlock(&b->lock);
    return Py_BuildValue("(LLLL)", (long long)total, (long long)in_use, (long long)peak, (long long)refused);
}

PyDoc_STRVAR(invoke_doc,
"invoke(engine, pre, payload, memory_limit, ticks, wasi_config, has_initialize, response_size,\n"
"       capture, cache, namespace[, budget, reserved])\n"
"    -> (status, phase, output, memory_size, instantiate_ns, run_ns, a, b, capture)\n\n"
"Run one request (`payload`, its envelope) in a fresh store. `output` is the response envelope\n"
"when status is 0.\n"
"`capture` is the request's Capture, or the (limit, max_records) to make one with on first use;\n"
"the last item is the capture, or None if none was made. With a `budget` (budget_new), `reserved`\n"
"bytes of it are held while the store lives. `wasi_config` (0 for none) is consumed.\n"
"`memory_size` is -1 when unknown; `a` and `b` carry the error and trap pointers (owned by the\n"
"caller) or the offending pointer and length (BAD_ALLOC: the pointer and the size asked for).");

/* The capture `invoke` reports: the caller's own, or the one made on first use, or None. Consumes
 * the owned reference in `state`. */
static PyObject *reported_capture(request_state *state, PyObject *given) {
    if (state->capture_args == NULL)
        return Py_NewRef(given);
    return state->capture != NULL ? state->capture : Py_NewRef(Py_None);
}

static PyObject *invoke(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 11 && nargs != 13) {
        PyErr_SetString(PyExc_TypeError, "invoke takes 11 or 13 arguments");
        return NULL;
    }
    budget *held = NULL;
    int64_t reserved = 0;
    if (nargs == 13 && args[11] != Py_None) {
        if ((held = PyCapsule_GetPointer(args[11], "isolate.budget")) == NULL || read_i64(args[12], &reserved) < 0)
            return NULL;
    }
    uint64_t engine, pre, ticks, wasi_config, response_size;
    int64_t memory_limit;
    if (read_u64(args[0], &engine) || read_u64(args[1], &pre) || read_i64(args[3], &memory_limit) ||
        read_u64(args[4], &ticks) || read_u64(args[5], &wasi_config) || read_u64(args[7], &response_size))
        return NULL;
    int has_initialize = PyObject_IsTrue(args[6]);
    if (has_initialize < 0)
        return NULL;
    bool lazy = PyTuple_CheckExact(args[8]);
    if (lazy && capture_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_fastpath.init was given no capture type");
        return NULL;
    }
    Py_buffer payload;
    if (PyObject_GetBuffer(args[2], &payload, PyBUF_SIMPLE) < 0)
        return NULL;
    if ((uint64_t)payload.len > UINT32_MAX) {
        PyBuffer_Release(&payload);
        PyErr_SetString(PyExc_ValueError, "payload larger than 4 GiB");
        return NULL;
    }

    request_state state = {.has_memory = false, .capture = lazy ? NULL : args[8], .capture_args = lazy ? args[8] : NULL,
                           .cache = args[9], .namespace_ = args[10]};
    int status = OK, phase = PHASE_INSTANTIATE;
    int64_t memory_size = -1, started = now_ns(), instantiated = started, finished = started;
    uint64_t a = 0, b = 0;
    uint8_t *copy = NULL;
    size_t copy_len = 0;

    if (held != NULL) { /* before the store: guests together never touch more than the budget */
        int64_t in_use;
        if (!budget_take(held, reserved, &in_use)) {
            if (wasi_config)
                api.wasi_config_delete((void *)(uintptr_t)wasi_config);
            PyBuffer_Release(&payload);
            return Py_BuildValue("(iiOLLLKKO)", OVER_BUDGET, PHASE_INSTANTIATE, Py_None, -1LL, 0LL, 0LL,
                                 (unsigned long long)in_use, 0ULL, lazy ? Py_None : args[8]);
        }
    }
    void *store = api.store_new((void *)(uintptr_t)engine, NULL, NULL);
    void *ctx = api.store_context(store);
    api.store_limiter(store, memory_limit, -1, 1, 1, 1);
    api.set_epoch_deadline(ctx, ticks);
    /* Read after the deadline is armed: a shutdown from now on interrupts the guest by epoch. */
    PyObject *stopping = PyObject_GetAttr(shutdown_module, s_stopping);
    if (stopping == NULL) {
        if (wasi_config)
            api.wasi_config_delete((void *)(uintptr_t)wasi_config);
        api.store_delete(store);
        if (held != NULL)
            budget_give(held, reserved);
        PyBuffer_Release(&payload);
        return NULL;
    }
    int stop = PyObject_IsTrue(stopping);
    Py_DECREF(stopping);
    if (stop) {
        if (wasi_config)
            api.wasi_config_delete((void *)(uintptr_t)wasi_config);
        status = STOPPING;
        goto done_with_gil;
    }
    if (wasi_config) {
        void *error = api.context_set_wasi(ctx, (void *)(uintptr_t)wasi_config);
        if (error) {
            status = WASI_FAILED;
            a = (uint64_t)(uintptr_t)error;
            goto done_with_gil;
        }
    }

    request_state *outer = current;
    current = &state;
    Py_BEGIN_ALLOW_THREADS
    void *trap = NULL, *error;
    wt_func instance;
    wt_extern memory, alloc, handle, init;
    wt_val_raw values[2];
    error = api.instantiate_pre((void *)(uintptr_t)pre, ctx, &instance, &trap);
    if (error || trap) {
        status = FAILED;
        goto out;
    }
    instantiated = now_ns();
    if (!(api.export_get(ctx, &instance, "memory", 6, &memory) && memory.kind == EXTERN_MEMORY &&
          api.export_get(ctx, &instance, "isolate_alloc", 13, &alloc) && alloc.kind == EXTERN_FUNC &&
          api.export_get(ctx, &instance, "isolate_handle", 14, &handle) && handle.kind == EXTERN_FUNC)) {
        status = LOST_EXPORT;
        goto out;
    }
    state.memory = memory;
    state.has_memory = true; /* host calls from here on skip the lookup by name */
    if (has_initialize) {
        phase = PHASE_INITIALIZE;
        if (!(api.export_get(ctx, &instance, "_initialize", 11, &init) && init.kind == EXTERN_FUNC)) {
            status = LOST_EXPORT;
            goto out;
        }
        error = api.call_unchecked(ctx, &init.of.func, values, 0, &trap);
        if (error || trap) {
            status = FAILED;
            memory_size = (int64_t)api.memory_data_size(ctx, &memory.of);
            goto out;
        }
    }
    phase = PHASE_ALLOC;
    uint32_t size = (uint32_t)payload.len;
    values[0].i64 = 0;
    values[0].i32 = (int32_t)size;
    error = api.call_unchecked(ctx, &alloc.of.func, values, 1, &trap);
    memory_size = (int64_t)api.memory_data_size(ctx, &memory.of);
    if (error || trap) {
        status = FAILED;
        goto out;
    }
    uint64_t ptr = (uint32_t)values[0].i32;
    if (ptr + size > (uint64_t)memory_size) {
        status = BAD_ALLOC;
        a = ptr;
        b = size;
        goto out;
    }
    if (size)
        memcpy(api.memory_data(ctx, &memory.of) + ptr, payload.buf, size);

    phase = PHASE_HANDLE;
    values[0].i64 = 0;
    values[0].i32 = (int32_t)ptr;
    values[1].i64 = 0;
    values[1].i32 = (int32_t)size;
    error = api.call_unchecked(ctx, &handle.of.func, values, 2, &trap);
    memory_size = (int64_t)api.memory_data_size(ctx, &memory.of);
    if (error || trap) {
        status = FAILED;
        goto out;
    }
    uint64_t packed = (uint64_t)values[0].i64;
    uint64_t out_ptr = packed >> 32, out_len = packed & UINT32_MAX;
    if (out_len > response_size) {
        status = TOO_LARGE;
        b = out_len;
        goto out;
    }
    if (out_len == 0 || out_ptr + out_len > (uint64_t)memory_size) {
        status = BAD_RESPONSE;
        a = out_ptr;
        b = out_len;
        goto out;
    }
    /* Copied out before the store goes, so the store is deleted without the GIL too. */
    copy = PyMem_RawMalloc(out_len);
    if (copy != NULL) {
        memcpy(copy, api.memory_data(ctx, &memory.of) + out_ptr, out_len);
        copy_len = out_len;
    }
    finished = now_ns();
out:
    if (status == FAILED) {
        a = (uint64_t)(uintptr_t)error;
        b = (uint64_t)(uintptr_t)trap;
    }
    if (instantiated == started)
        instantiated = now_ns();
    if (finished == started)
        finished = now_ns();
    api.store_delete(store);
    store = NULL;
    Py_END_ALLOW_THREADS
    current = outer;

done_with_gil:
    if (store != NULL)
        api.store_delete(store);
    if (held != NULL) /* the store, and the memory it could touch, are gone */
        budget_give(held, reserved);
    PyBuffer_Release(&payload);
    PyObject *capture = reported_capture(&state, args[8]);
    PyObject *output;
    if (status == OK) {
        if (copy == NULL) {
            Py_DECREF(capture);
            return PyErr_NoMemory();
        }
        output = PyBytes_FromStringAndSize((const char *)copy, (Py_ssize_t)copy_len);
        PyMem_RawFree(copy);
        if (output == NULL) {
            Py_DECREF(capture);
            return NULL;
        }
    } else {
        output = Py_NewRef(Py_None);
    }
    return Py_BuildValue("(iiNLLLKKN)", status, phase, output, (long long)memory_size,
                         (long long)(instantiated - started), (long long)(finished - instantiated),
                         (unsigned long long)a, (unsigned long long)b, capture);
}

PyDoc_STRVAR(instantiate_doc, "instantiate(engine, pre, memory_limit, ticks) -> (error, trap)\n\n"
"Create a store, apply the limits and deadline, instantiate, drop: the isolate cost alone (bench/).\n"
"Returns the error and trap pointers (0 when none), which the caller owns.");

static PyObject *instantiate(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    uint64_t engine, pre, ticks;
    int64_t memory_limit;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "instantiate takes 4 arguments");
        return NULL;
    }
    if (read_u64(args[0], &engine) || read_u64(args[1], &pre) || read_i64(args[2], &memory_limit) ||
        read_u64(args[3], &ticks))
        return NULL;
    void *error, *trap = NULL;
    Py_BEGIN_ALLOW_THREADS
    void *store = api.store_new((void *)(uintptr_t)engine, NULL, NULL);
    void *ctx = api.store_context(store);
    api.store_limiter(store, memory_limit, -1, 1, 1, 1);
    api.set_epoch_deadline(ctx, ticks);
    wt_func instance;
    error = api.instantiate_pre((void *)(uintptr_t)pre, ctx, &instance, &trap);
    api.store_delete(store);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(KK)", (unsigned long long)(uintptr_t)error, (unsigned long long)(uintptr_t)trap);
}

/* ---- the epoch ticker ---------------------------------------------------------------------
 * A native thread, not a Python one: a Python ticker takes the GIL on every tick (200 times a second
 * at 5 ms) and competes with the event loop for it; this one never touches Python. */

typedef struct {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    bool stop, joined;
    void *engine;
    int64_t tick_ns;
} ticker;

static void *tick_loop(void *arg) {
    ticker *t = arg;
    pthread_mutex_lock(&t->lock);
    while (!t->stop) {
        struct timespec at;
        clock_gettime(CLOCK_MONOTONIC, &at);
        int64_t ns = at.tv_nsec + t->tick_ns;
        at.tv_sec += ns / 1000000000;
        at.tv_nsec = ns % 1000000000;
        int rc = 0;
        while (!t->stop && rc != ETIMEDOUT)
            rc = pthread_cond_timedwait(&t->wake, &t->lock, &at);
        if (!t->stop)
            api.increment_epoch(t->engine);
    }
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

static void ticker_halt(ticker *t) {
    pthread_mutex_lock(&t->lock);
    t->stop = true;
    pthread_cond_signal(&t->wake);
    pthread_mutex_unlock(&t->lock);
    if (!t->joined) {
        pthread_join(t->thread, NULL);
        t->joined = true;
        api.engine_delete(t->engine); /* the thread's own reference: the engine outlives the thread */
        t->engine = NULL;
    }
}

static void ticker_destroy(ticker *t) {
    ticker_halt(t); /* a ticker dropped without ticker_stop must not outlive its capsule */
    pthread_cond_destroy(&t->wake);
    pthread_mutex_destroy(&t->lock);
    PyMem_RawFree(t);
}

static void ticker_free(PyObject *capsule) {
    ticker *t = PyCapsule_GetPointer(capsule, "isolate.ticker");
    if (t != NULL)
        ticker_destroy(t);
}

PyDoc_STRVAR(ticker_start_doc, "ticker_start(engine, tick_seconds) -> ticker\n\n"
"Start a thread that advances `engine`'s epoch every `tick_seconds` until ticker_stop(ticker).");

static PyObject *ticker_start(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long engine;
    double tick;
    if (!PyArg_ParseTuple(args, "Kd", &engine, &tick))
        return NULL;
    if (!(tick >= 1e-4 && tick <= 3600)) {
        PyErr_SetString(PyExc_ValueError, "tick must be within 0.1 ms..1 h");
        return NULL;
    }
    ticker *t = PyMem_RawCalloc(1, sizeof *t);
    if (t == NULL)
        return PyErr_NoMemory();
    /* A reference of the ticker's own: Python may finalize its Engine first (gc runs every __del__
     * of a garbage cycle before any capsule destructor), the thread must still find a live engine. */
    t->engine = api.engine_clone((void *)(uintptr_t)engine);
    t->tick_ns = (int64_t)(tick * 1e9);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&t->wake, &attr);
    pthread_condattr_destroy(&attr);
    pthread_mutex_init(&t->lock, NULL);
    int rc = pthread_create(&t->thread, NULL, tick_loop, t);
    if (rc != 0) {
        api.engine_delete(t->engine);
        pthread_cond_destroy(&t->wake);
        pthread_mutex_destroy(&t->lock);
        PyMem_RawFree(t);
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *capsule = PyCapsule_New(t, "isolate.ticker", ticker_free);
    if (capsule == NULL)
        ticker_destroy(t);
    return capsule;
}

static PyObject *ticker_stop(PyObject *self, PyObject *capsule) {
    (void)self;
    ticker *t = PyCapsule_GetPointer(capsule, "isolate.ticker");
    if (t == NULL)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ticker_halt(t);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ---- host functions ---------------------------------------------------------------------- */

#define MAX_LOG_MESSAGE (16 * 1024)
#define MAX_KEY 1024
#define MAX_VALUE (1024 * 1024)
#define MAX_TTL_MS (24 * 3600 * 1000)
enum { CACHE_MISS = -1, CACHE_BAD_KEY = -2, CACHE_VALUE_TOO_LARGE = -3, CACHE_BAD_TTL = -4, CACHE_REFUSED = -5 };

typedef struct {
    const char *name;
    uint8_t *base;
    uint64_t size;
} guest_memory;

/* The calling instance's memory: the request's `memory` export, or (during _initialize, or for a
 * run that is not ours) looked up by name. False when the module exports no memory. */
static bool memory_of(void *caller, const char *name, guest_memory *m) {
    void *ctx = api.caller_context(caller);
    m->name = name;
    request_state *state = current;
    wt_extern found;
    const void *item;
    if (state != NULL && state->has_memory) {
        item = &state->memory.of;
    } else {
        if (!api.caller_export_get(caller, "memory", 6, &found) || found.kind != EXTERN_MEMORY)
            return false;
        item = &found.of;
    }
    m->base = api.memory_data(ctx, item);
    m->size = api.memory_data_size(ctx, item);
    return true;
}

static inline bool inside(const guest_memory *m, uint32_t ptr, uint32_t len) {
    return (uint64_t)ptr + len <= m->size;
}

static void *trap_text(const char *text) {
    return api.trap_new(text, strlen(text));
}

/* Fail the guest as an `abi` failure: the capture says why, the trap stops the guest. GIL held. */
static void *abi_trap(const char *text) {
    request_state *state = current;
    if (state != NULL && state->capture != Py_None) {
        PyObject *capture = state_capture(state);
        PyObject *message = capture == NULL ? NULL : PyUnicode_FromString(text);
        if (message == NULL || PyObject_SetAttr(capture, s_abi_error, message) < 0)
            PyErr_Clear();
        Py_XDECREF(message);
    }
    return trap_text(text);
}

/* The guest passed a range outside its memory. GIL held. */
static void *fault(const guest_memory *m, const char *what, uint32_t ptr, uint32_t len) {
    char text[256];
    snprintf(text, sizeof text, "isolate.%s: %s %u+%u is outside guest memory (%llu bytes)", m->name, what, ptr,
             len, (unsigned long long)m->size);
    return abi_trap(text);
}

/* The module exports no memory (a host call from a module without one). GIL held. */
static void *no_memory(const char *name) {
    char text[128];
    snprintf(text, sizeof text, "isolate.%s: the module exports no memory", name);
    return abi_trap(text);
}

/* A Python error inside a host function is a host bug: it fails this request, never the process. */
static void *host_failed(const char *name) {
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    const char *type_name = type != NULL ? ((PyTypeObject *)type)->tp_name : "error";
    char text[256];
    snprintf(text, sizeof text, "isolate.%s failed in the host: %s", name, type_name);
    PyObject *who = PyUnicode_FromString(name);
    if (who != NULL && value != NULL) {
        PyObject *result = PyObject_CallFunctionObjArgs(report_failure, who, value, NULL);
        Py_XDECREF(result);
    }
    Py_XDECREF(who);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    PyErr_Clear();
    return trap_text(text);
}

/* Capture.add (engine/_output.py) for one log call, without its Python frame and the frozen
 * LogRecord's __init__ (together ~1 µs of every request that logs): the same rule, which
 * tests/test_fastpath.py holds against the Python one. Returns -1 with a Python error set. */
static PyObject *record_type; /* abi.LogRecord, from init; NULL: call Capture.add */
static long long record_overhead;
static PyObject *s_used, *s_limit, *s_max_records, *s_records;
static PyObject *construct(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

static int get_count(PyObject *obj, PyObject *name, long long *out) {
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL)
        return -1;
    *out = PyLong_AsLongLong(value);
    Py_DECREF(value);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int capture_add(PyObject *capture, PyObject *level, const uint8_t *data, uint32_t size) {
    if (record_type == NULL) {
        PyObject *bytes = PyBytes_FromStringAndSize((const char *)data, size);
        PyObject *call[] = {capture, s_log_stream, level, bytes};
        PyObject *r = bytes ? PyObject_VectorcallMethod(s_add, call, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL) : NULL;
        Py_XDECREF(bytes);
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    long long used, limit, max_records;
    if (get_count(capture, s_used, &used) < 0 || get_count(capture, s_limit, &limit) < 0 ||
        get_count(capture, s_max_records, &max_records) < 0)
        return -1;
    if (used + size + record_overhead > limit) { /* does not fit: counted, not kept */
        PyObject *n = PyLong_FromUnsignedLong(size);
        PyObject *r = n ? PyObject_CallMethodOneArg(capture, s_drop, n) : NULL;
        Py_XDECREF(n);
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    PyObject *text = PyUnicode_DecodeUTF8((const char *)data, size, "replace");
    if (text == NULL)
        return -1;
    PyObject *fields[] = {record_type, s_log_stream, level, text};
    PyObject *record = construct(NULL, fields, 4);
    Py_DECREF(text);
    if (record == NULL)
        return -1;
    PyObject *records = PyObject_GetAttr(capture, s_records);
    int rc = records == NULL ? -1 : PyList_Check(records) ? PyList_Append(records, record) : -1;
    if (records != NULL && rc < 0 && !PyErr_Occurred())
        PyErr_SetString(PyExc_TypeError, "capture.records is not a list");
    Py_DECREF(record);
    if (rc == 0) {
        used += size + record_overhead;
        PyObject *now = PyLong_FromLongLong(used);
        rc = now == NULL ? -1 : PyObject_SetAttr(capture, s_used, now);
        Py_XDECREF(now);
        if (rc == 0 && (PyList_GET_SIZE(records) >= max_records || used + record_overhead > limit))
            rc = PyObject_SetAttr(capture, s_full, Py_True);
    }
    Py_XDECREF(records);
    return rc;
}

/* log(level, ptr, len) */
static void *host_log(void *env, void *caller, wt_val_raw *values, size_t count) {
    (void)env;
    (void)count;
    request_state *state = current;
    if (state == NULL || state->capture == Py_None)
        return NULL;
    int32_t level = values[0].i32;
    uint32_t ptr = (uint32_t)values[1].i32, len = (uint32_t)values[2].i32;
    uint32_t size = len < MAX_LOG_MESSAGE ? len : MAX_LOG_MESSAGE;
    guest_memory m;
    bool has_memory = memory_of(caller, "log", &m);
    void *trap = NULL;
    PyGILState_STATE gil = PyGILState_Ensure();
    /* A full capture takes nothing more: the record is counted, not even read. Otherwise `add`
     * keeps or counts it (a message is at most 16 KiB, so copying it first costs little). */
    PyObject *capture = state_capture(state);
    PyObject *full = capture ? PyObject_GetAttr(capture, s_full) : NULL;
    int over = full ? PyObject_IsTrue(full) : -1;
    Py_XDECREF(full);
    if (over > 0) {
        PyObject *n = PyLong_FromUnsignedLong(size);
        PyObject *r = n ? PyObject_CallMethodOneArg(capture, s_drop, n) : NULL;
        if (r == NULL)
            trap = host_failed("log");
        Py_XDECREF(r);
        Py_XDECREF(n);
    } else if (over < 0) {
        trap = host_failed("log");
    } else if (!has_memory) {
        trap = no_memory("log");
    } else if (!inside(&m, ptr, len)) {
        trap = fault(&m, "message", ptr, len);
    } else {
        PyObject *name = (level >= 0 && level < PyTuple_GET_SIZE(log_levels)) ? PyTuple_GET_ITEM(log_levels, level)
                                                                               : s_info;
        if (capture_add(capture, name, m.base + ptr, size) < 0)
            trap = host_failed("log");
    }
    PyGILState_Release(gil);
    return trap;
}

/* cache_get(key, key_len, out, out_cap) -> length | error */
static void *host_cache_get(void *env, void *caller, wt_val_raw *values, size_t count) {
    (void)env;
    (void)count;
    uint32_t key_ptr = (uint32_t)values[0].i32, key_len = (uint32_t)values[1].i32;
    uint32_t out_ptr = (uint32_t)values[2].i32, out_cap = (uint32_t)values[3].i32;
    if (key_len == 0 || key_len > MAX_KEY) {
        values[0].i32 = CACHE_BAD_KEY;
        return NULL;
    }
    guest_memory m;
    bool has_memory = memory_of(caller, "cache_get", &m);
    request_state *state = current;
    void *trap = NULL;
    int32_t result = CACHE_MISS;
    PyGILState_STATE gil = PyGILState_Ensure();
    if (!has_memory) {
        trap = no_memory("cache_get");
    } else if (!inside(&m, key_ptr, key_len)) {
        trap = fault(&m, "key", key_ptr, key_len);
    } else if (state != NULL && state->cache != Py_None) {
        PyObject *key = PyBytes_FromStringAndSize((const char *)m.base + key_ptr, key_len);
        PyObject *call[] = {state->cache, state->namespace_, key};
        PyObject *value = key ? PyObject_VectorcallMethod(s_get, call, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL)
                              : NULL;
        Py_XDECREF(key);
        if (value == NULL) {
            trap = host_failed("cache_get");
        } else if (value != Py_None) {
            if (!PyBytes_Check(value)) {
                PyErr_SetString(PyExc_TypeError, "the guest cache returned a non-bytes value");
                trap = host_failed("cache_get");
            } else if (!inside(&m, out_ptr, out_cap)) {
                trap = fault(&m, "output buffer", out_ptr, out_cap);
            } else {
                Py_ssize_t length = PyBytes_GET_SIZE(value);
                memcpy(m.base + out_ptr, PyBytes_AS_STRING(value), (size_t)length < out_cap ? (size_t)length : out_cap);
                result = (int32_t)length;
            }
        }
        Py_XDECREF(value);
    }
    PyGILState_Release(gil);
    values[0].i32 = result;
    return trap;
}

/* cache_put(key, key_len, value, value_len, ttl_ms) -> 0 | error */
static void *host_cache_put(void *env, void *caller, wt_val_raw *values, size_t count) {
    (void)env;
    (void)count;
    uint32_t key_ptr = (uint32_t)values[0].i32, key_len = (uint32_t)values[1].i32;
    uint32_t value_ptr = (uint32_t)values[2].i32, value_len = (uint32_t)values[3].i32;
    int32_t ttl_ms = values[4].i32;
    /* Sizes are judged before memory is read: an oversized value is refused without copying it. */
    if (key_len == 0 || key_len > MAX_KEY) {
        values[0].i32 = CACHE_BAD_KEY;
        return NULL;
    }
    if (value_len > MAX_VALUE) {
        values[0].i32 = CACHE_VALUE_TOO_LARGE;
        return NULL;
    }
    if (ttl_ms <= 0 || ttl_ms > MAX_TTL_MS) {
        values[0].i32 = CACHE_BAD_TTL;
        return NULL;
    }
    guest_memory m;
    bool has_memory = memory_of(caller, "cache_put", &m);
    request_state *state = current;
    void *trap = NULL;
    int32_t result = CACHE_REFUSED;
    PyGILState_STATE gil = PyGILState_Ensure();
    if (!has_memory) {
        trap = no_memory("cache_put");
    } else if (!inside(&m, key_ptr, key_len)) {
        trap = fault(&m, "key", key_ptr, key_len);
    } else if (!inside(&m, value_ptr, value_len)) {
        trap = fault(&m, "value", value_ptr, value_len);
    } else if (state != NULL && state->cache != Py_None) {
        PyObject *key = PyBytes_FromStringAndSize((const char *)m.base + key_ptr, key_len);
        PyObject *data = key ? PyBytes_FromStringAndSize((const char *)m.base + value_ptr, value_len) : NULL;
        PyObject *ttl = data ? PyLong_FromLong(ttl_ms) : NULL;
        PyObject *call[] = {state->cache, state->namespace_, key, data, ttl};
        PyObject *stored = ttl ? PyObject_VectorcallMethod(s_put, call, 5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL)
                               : NULL;
        if (stored == NULL) {
            trap = host_failed("cache_put");
        } else {
            int ok = PyObject_IsTrue(stored);
            if (ok < 0)
                trap = host_failed("cache_put");
            else if (ok)
                result = 0;
        }
        Py_XDECREF(stored);
        Py_XDECREF(ttl);
        Py_XDECREF(data);
        Py_XDECREF(key);
    }
    PyGILState_Release(gil);
    values[0].i32 = result;
    return trap;
}

static const struct {
    const char *name;
    host_callback callback;
} HOST_FUNCTIONS[] = {
    {"log", host_log},
    {"cache_get", host_cache_get},
    {"cache_put", host_cache_put},
};

PyDoc_STRVAR(define_doc, "define(linker, name, functype) -> error\n\n"
"Define `isolate.<name>` on the linker (addresses) with its native host function; returns the\n"
"wasmtime_error_t pointer (0 on success), which the caller owns.");

static PyObject *define(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long linker, functype;
    const char *name;
    if (!PyArg_ParseTuple(args, "KsK", &linker, &name, &functype))
        return NULL;
    for (size_t i = 0; i < sizeof HOST_FUNCTIONS / sizeof HOST_FUNCTIONS[0]; i++) {
        if (strcmp(HOST_FUNCTIONS[i].name, name) == 0) {
            void *error = api.define_unchecked((void *)(uintptr_t)linker, "isolate", 7, name, strlen(name),
                                               (void *)(uintptr_t)functype, HOST_FUNCTIONS[i].callback, NULL, NULL);
            return PyLong_FromUnsignedLongLong((uint64_t)(uintptr_t)error);
        }
    }
    PyErr_Format(PyExc_KeyError, "no native host function %s", name);
    return NULL;
}

PyDoc_STRVAR(init_doc, "init(addresses, shutdown, levels, report_failure[, record_type, record_overhead,\n"
"     capture_type])\n\n"
"Take the addresses of the C API functions (a mapping of name to address; see `names()`), the\n"
"module whose `stopping` is read before each guest starts, the log level names by number, and\n"
"report_failure(name, exception), called when a host function fails in the host; log calls make\n"
"records of `record_type` (abi.LogRecord) charged `record_overhead` bytes each, as Capture.add does\n"
"(without them, log calls go through Capture.add). `capture_type` (_output.Capture) makes the\n"
"captures `invoke` is asked to make on first use.");

static PyObject *init(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *addresses, *shutdown, *levels, *report, *record = NULL, *capture = NULL;
    long long overhead = 0;
    if (!PyArg_ParseTuple(args, "OOO!O|O!LO!", &addresses, &shutdown, &PyTuple_Type, &levels, &report, &PyType_Type,
                          &record, &overhead, &PyType_Type, &capture))
        return NULL;
    void *table[API_COUNT];
    for (size_t i = 0; i < API_COUNT; i++) {
        PyObject *address = PyMapping_GetItemString(addresses, API_NAMES[i]);
        if (address == NULL)
            return NULL;
        table[i] = PyLong_AsVoidPtr(address);
        Py_DECREF(address);
        if (table[i] == NULL) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "null address for %s", API_NAMES[i]);
            return NULL;
        }
    }
    memcpy(&api, table, sizeof api);
    Py_XSETREF(shutdown_module, Py_NewRef(shutdown));
    Py_XSETREF(log_levels, Py_NewRef(levels));
    Py_XSETREF(report_failure, Py_NewRef(report));
    Py_XSETREF(record_type, Py_XNewRef(record));
    Py_XSETREF(capture_type, Py_XNewRef(capture));
    record_overhead = overhead;
    Py_RETURN_NONE;
}

static PyObject *names(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    PyObject *result = PyTuple_New(API_COUNT);
    for (size_t i = 0; result != NULL && i < API_COUNT; i++) {
        PyObject *name = PyUnicode_FromString(API_NAMES[i]);
        if (name == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyTuple_SET_ITEM(result, i, name);
    }
    return result;
}

static PyObject *layout(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return Py_BuildValue("{s:n,s:n,s:n,s:n}", "val_raw", (Py_ssize_t)sizeof(wt_val_raw), "extern",
                         (Py_ssize_t)sizeof(wt_extern), "extern_of", (Py_ssize_t)offsetof(wt_extern, of), "func",
                         (Py_ssize_t)sizeof(wt_func));
}

/* The capture of the request this thread runs, or None: for host functions written in Python that
 * the native path runs without telling them the request (isolate.out_of_memory, a failure path). */
static PyObject *current_capture(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    request_state *state = current;
    if (state == NULL)
        Py_RETURN_NONE;
    PyObject *capture = state_capture(state);
    return capture == NULL ? NULL : Py_NewRef(capture);
}

static PyMethodDef methods[] = {
    {"invoke", (PyCFunction)(void (*)(void))invoke, METH_FASTCALL, invoke_doc},
    {"instantiate", (PyCFunction)(void (*)(void))instantiate, METH_FASTCALL, instantiate_doc},
    {"encode_request", (PyCFunction)(void (*)(void))encode_request, METH_FASTCALL, encode_doc},
    {"decode_response", decode_response, METH_O, decode_doc},
    {"construct", (PyCFunction)(void (*)(void))construct, METH_FASTCALL, construct_doc},
    {"budget_new", budget_new, METH_O, "budget_new(total) -> budget: a memory budget of `total` bytes."},
    {"budget_reserve", (PyCFunction)(void (*)(void))budget_reserve, METH_FASTCALL,
     "budget_reserve(budget, size) -> bool: hold `size` bytes, or refuse (and count the refusal)."},
    {"budget_release", (PyCFunction)(void (*)(void))budget_release, METH_FASTCALL,
     "budget_release(budget, size): give back `size` bytes held."},
    {"budget_stats", budget_stats, METH_O, "budget_stats(budget) -> (total, in_use, peak, refused)"},
    {"define", define, METH_VARARGS, define_doc},
    {"ticker_start", ticker_start, METH_VARARGS, ticker_start_doc},
    {"ticker_stop", ticker_stop, METH_O, "Stop a ticker and wait for its thread (idempotent)."},
    {"init", init, METH_VARARGS, init_doc},
    {"names", names, METH_NOARGS, "The C API functions `init` needs, by name."},
    {"current_capture", current_capture, METH_NOARGS, "The capture of the request this thread runs, or None."},
    {"layout", layout, METH_NOARGS, "Sizes and offsets of the wasmtime structs this file declares."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath", "One native call per request on wasmtime's C API.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    struct {
        PyObject **slot;
        const char *text;
    } strings[] = {
        {&s_stopping, "stopping"}, {&s_full, "full"}, {&s_drop, "drop"}, {&s_add, "add"},
        {&s_get, "get"}, {&s_put, "put"}, {&s_log_stream, "log"}, {&s_info, "info"}, {&s_abi_error, "abi_error"},
        {&s_method, "method"}, {&s_path, "path"}, {&s_query, "query"}, {&s_headers, "headers"}, {&s_body, "body"},
        {&s_params, "params"}, {&s_region, "region"}, {&s_client_region, "client_region"},
        {&s_request_id, "request_id"}, {&s_slots, "__slots__"}, {&s_used, "used"}, {&s_limit, "limit"},
        {&s_max_records, "max_records"}, {&s_records, "records"},
    };
    for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++) {
        *strings[i].slot = PyUnicode_InternFromString(strings[i].text);
        if (*strings[i].slot == NULL)
            return NULL;
    }
    return PyModule_Create(&module);
}
