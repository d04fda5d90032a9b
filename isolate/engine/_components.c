/* isolate.engine._components: component-model host functions implemented in Python, called from
 * wasmtime's C API without wasmtime-py's component layer.
 *
 * wasmtime-py's component API re-reads the function type on every call and converts list<u8> one
 * byte at a time in Python (~45 µs per call). Here a callback converts the canonical values to
 * Python objects in C, calls the Python function, and converts its result back by walking the
 * result type once. As in _fastpath.c the wasmtime C API is not linked: `init` receives the
 * addresses of the functions of the libwasmtime that the `wasmtime` wheel already loaded, and the
 * struct layouts below are wasmtime 50's (tests/test_component_bridge.py checks them against
 * wasmtime-py's bindings, which are generated from the same headers).
 *
 * Values (both directions): bool/ints/floats as such; char -> 1-char str; string -> str;
 * list<u8> -> bytes; other lists -> list; tuple and record -> tuple; variant -> (case, payload|None);
 * enum -> str; flags -> frozenset[str]; option -> None|value; result -> ("ok"|"err", payload|None);
 * own/borrow parameters -> int rep; own<R> results: an int rep, made a host resource of R's type id.
 *
 * A bad value or a Python exception never escapes to wasmtime: it is stored on the request's state
 * (`state.error`, first one wins) and the guest call fails with a wasmtime error naming the function.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* ---- wasmtime 50 C API: the layouts and signatures used (crates/c-api/include/wasmtime/component/) ---- */

typedef struct {
    size_t size;
    char *data;
} wt_name; /* wasm_byte_vec_t, wasm_name_t */

typedef struct wt_val wt_val;

typedef struct {
    size_t size;
    wt_val *data;
} wt_vallist; /* also wasmtime_component_valtuple_t */

typedef struct wt_record_entry wt_record_entry;

typedef struct {
    size_t size;
    wt_record_entry *data;
} wt_valrecord;

typedef struct {
    size_t size;
    wt_name *data;
} wt_valflags;

typedef struct {
    wt_name discriminant;
    wt_val *val;
} wt_valvariant;

typedef struct {
    bool is_ok;
    wt_val *val;
} wt_valresult;

struct wt_val {
    uint8_t kind;
    union {
        bool boolean;
        int8_t s8;
        uint8_t u8;
        int16_t s16;
        uint16_t u16;
        int32_t s32;
        uint32_t u32;
        int64_t s64;
        uint64_t u64;
        float f32;
        double f64;
        uint32_t character;
        wt_name string;
        wt_vallist list;
        wt_valrecord record;
        wt_vallist tuple;
        wt_valvariant variant;
        wt_name enumeration;
        wt_val *option;
        wt_valresult result;
        wt_valflags flags;
        void *resource; /* wasmtime_component_resource_any_t* */
    } of;
};

struct wt_record_entry {
    wt_name name;
    wt_val val;
};

typedef struct {
    uint8_t kind;
    union {
        void *ptr; /* list, record, tuple, variant, enum_, option, result, flags, own, borrow, ... */
    } of;
} wt_valtype;

typedef struct {
    uint64_t store_id;
    uint32_t private1;
} wt_cinstance; /* wasmtime_component_instance_t */

typedef struct {
    wt_cinstance anon;
    uint32_t private2;
    void *private3;
} wt_cfunc; /* wasmtime_component_func_t */

_Static_assert(sizeof(wt_name) == 16, "wasm_byte_vec_t is 16 bytes");
_Static_assert(sizeof(wt_val) == 32 && offsetof(wt_val, of) == 8, "wasmtime_component_val_t layout");
_Static_assert(sizeof(wt_record_entry) == 48 && offsetof(wt_record_entry, val) == 16, "valrecord_entry layout");
_Static_assert(sizeof(wt_valvariant) == 24 && offsetof(wt_valvariant, val) == 16, "valvariant layout");
_Static_assert(sizeof(wt_valresult) == 16 && offsetof(wt_valresult, val) == 8, "valresult layout");
_Static_assert(sizeof(wt_valtype) == 16 && offsetof(wt_valtype, of) == 8, "wasmtime_component_valtype_t layout");
_Static_assert(sizeof(wt_cinstance) == 16, "wasmtime_component_instance_t is 16 bytes");
_Static_assert(sizeof(wt_cfunc) == 32, "wasmtime_component_func_t is 32 bytes");

/* wasmtime_component_valkind_t (values) and wasmtime_component_valtype_kind_t (types) are numbered
 * differently (wasmtime/_ffi.py, component/val.h and types/val.h). */
enum {
    V_BOOL = 0, V_S8 = 1, V_U8 = 2, V_S16 = 3, V_U16 = 4, V_S32 = 5, V_U32 = 6, V_S64 = 7, V_U64 = 8,
    V_F32 = 9, V_F64 = 10, V_CHAR = 11, V_STRING = 12, V_LIST = 13, V_RECORD = 14, V_TUPLE = 15,
    V_VARIANT = 16, V_ENUM = 17, V_OPTION = 18, V_RESULT = 19, V_FLAGS = 20, V_RESOURCE = 21,
};
enum {
    T_BOOL = 0, T_S8 = 1, T_S16 = 2, T_S32 = 3, T_S64 = 4, T_U8 = 5, T_U16 = 6, T_U32 = 7, T_U64 = 8,
    T_F32 = 9, T_F64 = 10, T_CHAR = 11, T_STRING = 12, T_LIST = 13, T_RECORD = 14, T_TUPLE = 15,
    T_VARIANT = 16, T_ENUM = 17, T_OPTION = 18, T_RESULT = 19, T_FLAGS = 20, T_OWN = 21, T_BORROW = 22,
};

typedef void *(*host_callback)(void *env, void *ctx, const void *ty, wt_val *args, size_t nargs, wt_val *results,
                               size_t nresults);
typedef void *(*dtor_callback)(void *env, void *ctx, uint32_t rep);

static struct {
    void *(*store_new)(void *engine, void *data, void (*finalizer)(void *));
    void *(*store_context)(void *store);
    void (*store_limiter)(void *store, int64_t memory, int64_t table_elements, int64_t instances, int64_t tables,
                          int64_t memories);
    void (*store_delete)(void *store);
    void (*set_epoch_deadline)(void *ctx, uint64_t ticks);
    void *(*context_get_data)(const void *ctx);
    void *(*error_new)(const char *message);
    void (*error_message)(const void *error, wt_name *out);
    void (*error_delete)(void *error);
    void (*byte_vec_new)(wt_name *out, size_t size, const char *data);
    void (*byte_vec_delete)(wt_name *vec);
    void *(*linker_instantiate)(const void *linker, void *ctx, const void *component, wt_cinstance *out);
    bool (*instance_get_func)(const wt_cinstance *instance, void *ctx, const void *index, wt_cfunc *out);
    void *(*func_type)(const wt_cfunc *func, void *ctx);
    void *(*func_call)(const wt_cfunc *func, void *ctx, const wt_val *args, size_t nargs, wt_val *results,
                       size_t nresults);
    void *(*func_post_return)(const wt_cfunc *func, void *ctx);
    void *(*get_export_index)(const void *component, const void *parent, const char *name, size_t len);
    void (*export_index_delete)(void *index);
    void *(*add_func)(void *instance, const char *name, size_t len, host_callback callback, void *env,
                      void (*finalizer)(void *));
    void *(*add_resource)(void *instance, const char *name, size_t len, const void *type, dtor_callback dtor,
                          void *env, void (*finalizer)(void *));
    void *(*resource_type_new_host)(uint32_t id);
    bool (*resource_type_equal)(const void *a, const void *b);
    void *(*resource_any_to_host)(void *ctx, const void *any, void **host_out);
    void (*resource_any_delete)(void *any);
    void *(*resource_host_new)(bool owned, uint32_t rep, uint32_t type);
    uint32_t (*resource_host_rep)(const void *host);
    void *(*resource_host_to_any)(void *ctx, const void *host, void **any_out);
    void (*resource_host_delete)(void *host);
    void (*vallist_new_uninit)(wt_vallist *out, size_t size);
    void (*vallist_delete)(wt_vallist *list);
    void (*valrecord_new_uninit)(wt_valrecord *out, size_t size);
    void (*valrecord_delete)(wt_valrecord *record);
    void (*valtuple_new_uninit)(wt_vallist *out, size_t size);
    void (*valtuple_delete)(wt_vallist *tuple);
    void (*valflags_new_uninit)(wt_valflags *out, size_t size);
    void (*valflags_delete)(wt_valflags *flags);
    wt_val *(*val_new)(wt_val *val); /* moves `val` into a new heap value */
    void (*val_delete)(wt_val *val); /* frees what `val` owns, not its storage */
    void (*valtype_delete)(wt_valtype *ty);
    void (*func_type_delete)(void *ty);
    size_t (*func_type_param_count)(const void *ty);
    bool (*func_type_param_nth)(const void *ty, size_t nth, const char **name, size_t *len, wt_valtype *out);
    bool (*func_type_result)(const void *ty, wt_valtype *out);
    void (*list_type_element)(const void *ty, wt_valtype *out);
    size_t (*record_type_field_count)(const void *ty);
    bool (*record_type_field_nth)(const void *ty, size_t nth, const char **name, size_t *len, wt_valtype *out);
    size_t (*tuple_type_types_count)(const void *ty);
    bool (*tuple_type_types_nth)(const void *ty, size_t nth, wt_valtype *out);
    size_t (*variant_type_case_count)(const void *ty);
    bool (*variant_type_case_nth)(const void *ty, size_t nth, const char **name, size_t *len, bool *has_payload,
                                  wt_valtype *payload);
    size_t (*enum_type_names_count)(const void *ty);
    bool (*enum_type_names_nth)(const void *ty, size_t nth, const char **name, size_t *len);
    void (*option_type_ty)(const void *ty, wt_valtype *out);
    bool (*result_type_ok)(const void *ty, wt_valtype *out);
    bool (*result_type_err)(const void *ty, wt_valtype *out);
    size_t (*flags_type_names_count)(const void *ty);
    bool (*flags_type_names_nth)(const void *ty, size_t nth, const char **name, size_t *len);
} api;

static const char *const API_NAMES[] = {
    "wasmtime_store_new", "wasmtime_store_context", "wasmtime_store_limiter", "wasmtime_store_delete",
    "wasmtime_context_set_epoch_deadline", "wasmtime_context_get_data", "wasmtime_error_new",
    "wasmtime_error_message", "wasmtime_error_delete", "wasm_byte_vec_new", "wasm_byte_vec_delete",
    "wasmtime_component_linker_instantiate", "wasmtime_component_instance_get_func", "wasmtime_component_func_type",
    "wasmtime_component_func_call", "wasmtime_component_func_post_return", "wasmtime_component_get_export_index",
    "wasmtime_component_export_index_delete", "wasmtime_component_linker_instance_add_func",
    "wasmtime_component_linker_instance_add_resource", "wasmtime_component_resource_type_new_host",
    "wasmtime_component_resource_type_equal", "wasmtime_component_resource_any_to_host",
    "wasmtime_component_resource_any_delete", "wasmtime_component_resource_host_new",
    "wasmtime_component_resource_host_rep", "wasmtime_component_resource_host_to_any",
    "wasmtime_component_resource_host_delete", "wasmtime_component_vallist_new_uninit",
    "wasmtime_component_vallist_delete", "wasmtime_component_valrecord_new_uninit",
    "wasmtime_component_valrecord_delete", "wasmtime_component_valtuple_new_uninit",
    "wasmtime_component_valtuple_delete", "wasmtime_component_valflags_new_uninit",
    "wasmtime_component_valflags_delete", "wasmtime_component_val_new", "wasmtime_component_val_delete",
    "wasmtime_component_valtype_delete", "wasmtime_component_func_type_delete",
    "wasmtime_component_func_type_param_count", "wasmtime_component_func_type_param_nth",
    "wasmtime_component_func_type_result", "wasmtime_component_list_type_element",
    "wasmtime_component_record_type_field_count", "wasmtime_component_record_type_field_nth",
    "wasmtime_component_tuple_type_types_count", "wasmtime_component_tuple_type_types_nth",
    "wasmtime_component_variant_type_case_count", "wasmtime_component_variant_type_case_nth",
    "wasmtime_component_enum_type_names_count", "wasmtime_component_enum_type_names_nth",
    "wasmtime_component_option_type_ty", "wasmtime_component_result_type_ok", "wasmtime_component_result_type_err",
    "wasmtime_component_flags_type_names_count", "wasmtime_component_flags_type_names_nth",
};
#define API_COUNT (sizeof(API_NAMES) / sizeof(API_NAMES[0]))
_Static_assert(sizeof(api) == API_COUNT * sizeof(void *), "one address per API name");

static bool initialised;
static PyObject *s_error, *s_ok, *s_err;

/* Host resource types by id (define_resource), to find an own<R> result's id. Read and written
 * with the GIL held. The types live as long as the process: linkers hold them. */
static struct {
    uint32_t id;
    void *type;
} *resource_types;
static size_t resource_count, resource_cap;

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* the clock of time.perf_counter() on Linux */
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The text of a wasmtime error, which is freed. GIL held. */
static PyObject *take_message(void *error) {
    wt_name text = {0, NULL};
    api.error_message(error, &text);
    PyObject *message = PyUnicode_DecodeUTF8(text.data, (Py_ssize_t)text.size, "replace");
    api.byte_vec_delete(&text);
    api.error_delete(error);
    return message;
}

/* ---- component values -> Python ------------------------------------------------------------ */

/* `ty` is the value's type when known (NULL otherwise): only lists need it, to tell an empty
 * list<u8> (bytes) from other empty lists, so it is looked up only for compound values. */
static PyObject *from_val(void *ctx, const wt_val *v, const wt_valtype *ty);

static PyObject *name_str(const wt_name *name) {
    return PyUnicode_DecodeUTF8(name->data, (Py_ssize_t)name->size, "strict");
}

static PyObject *from_list(void *ctx, const wt_vallist *list, const wt_valtype *ty) {
    wt_valtype element = {.kind = 0xff};
    bool has_element = false;
    if (ty != NULL && ty->kind == T_LIST) {
        api.list_type_element(ty->of.ptr, &element);
        has_element = true;
    }
    PyObject *result = NULL;
    bool bytes = has_element ? element.kind == T_U8 : (list->size > 0 && list->data[0].kind == V_U8);
    if (bytes) {
        result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)list->size);
        if (result != NULL) {
            char *out = PyBytes_AS_STRING(result);
            for (size_t i = 0; i < list->size; i++)
                out[i] = (char)list->data[i].of.u8;
        }
    } else {
        result = PyList_New((Py_ssize_t)list->size);
        for (size_t i = 0; result != NULL && i < list->size; i++) {
            PyObject *item = from_val(ctx, &list->data[i], has_element ? &element : NULL);
            if (item == NULL)
                Py_CLEAR(result);
            else
                PyList_SET_ITEM(result, (Py_ssize_t)i, item);
        }
    }
    if (has_element)
        api.valtype_delete(&element);
    return result;
}

/* The type of child `i` of a record, tuple, variant case or option/result payload, or false. */
static bool child_type(const wt_valtype *ty, uint8_t kind, size_t i, wt_valtype *out) {
    if (ty == NULL || ty->kind != kind)
        return false;
    const char *name;
    size_t len;
    bool has;
    switch (kind) {
    case T_RECORD:
        return api.record_type_field_nth(ty->of.ptr, i, &name, &len, out);
    case T_TUPLE:
        return api.tuple_type_types_nth(ty->of.ptr, i, out);
    case T_VARIANT:
        return api.variant_type_case_nth(ty->of.ptr, i, &name, &len, &has, out) && has;
    case T_OPTION:
        api.option_type_ty(ty->of.ptr, out);
        return true;
    case T_RESULT:
        return i == 0 ? api.result_type_ok(ty->of.ptr, out) : api.result_type_err(ty->of.ptr, out);
    }
    return false;
}

static PyObject *from_child(void *ctx, const wt_val *v, const wt_valtype *ty, uint8_t kind, size_t i) {
    wt_valtype child;
    bool typed = child_type(ty, kind, i, &child);
    PyObject *result = from_val(ctx, v, typed ? &child : NULL);
    if (typed)
        api.valtype_delete(&child);
    return result;
}

static PyObject *pair(PyObject *first, PyObject *second) { /* steals both */
    if (first == NULL || second == NULL) {
        Py_XDECREF(first);
        Py_XDECREF(second);
        return NULL;
    }
    PyObject *result = PyTuple_Pack(2, first, second);
    Py_DECREF(first);
    Py_DECREF(second);
    return result;
}

static PyObject *from_val(void *ctx, const wt_val *v, const wt_valtype *ty) {
    switch (v->kind) {
    case V_BOOL:
        return PyBool_FromLong(v->of.boolean);
    case V_S8:
        return PyLong_FromLong(v->of.s8);
    case V_U8:
        return PyLong_FromLong(v->of.u8);
    case V_S16:
        return PyLong_FromLong(v->of.s16);
    case V_U16:
        return PyLong_FromLong(v->of.u16);
    case V_S32:
        return PyLong_FromLong(v->of.s32);
    case V_U32:
        return PyLong_FromUnsignedLong(v->of.u32);
    case V_S64:
        return PyLong_FromLongLong(v->of.s64);
    case V_U64:
        return PyLong_FromUnsignedLongLong(v->of.u64);
    case V_F32:
        return PyFloat_FromDouble(v->of.f32);
    case V_F64:
        return PyFloat_FromDouble(v->of.f64);
    case V_CHAR:
        return PyUnicode_FromOrdinal((int)v->of.character);
    case V_STRING:
        return name_str(&v->of.string);
    case V_LIST:
        return from_list(ctx, &v->of.list, ty);
    case V_RECORD: {
        PyObject *result = PyTuple_New((Py_ssize_t)v->of.record.size);
        for (size_t i = 0; result != NULL && i < v->of.record.size; i++) {
            PyObject *item = from_child(ctx, &v->of.record.data[i].val, ty, T_RECORD, i);
            if (item == NULL)
                Py_CLEAR(result);
            else
                PyTuple_SET_ITEM(result, (Py_ssize_t)i, item);
        }
        return result;
    }
    case V_TUPLE: {
        PyObject *result = PyTuple_New((Py_ssize_t)v->of.tuple.size);
        for (size_t i = 0; result != NULL && i < v->of.tuple.size; i++) {
            PyObject *item = from_child(ctx, &v->of.tuple.data[i], ty, T_TUPLE, i);
            if (item == NULL)
                Py_CLEAR(result);
            else
                PyTuple_SET_ITEM(result, (Py_ssize_t)i, item);
        }
        return result;
    }
    case V_VARIANT: {
        PyObject *payload = Py_None;
        Py_INCREF(payload);
        if (v->of.variant.val != NULL) {
            Py_DECREF(payload);
            /* The case's index is needed for its payload type: find it by name. */
            size_t index = (size_t)-1;
            if (ty != NULL && ty->kind == T_VARIANT) {
                size_t count = api.variant_type_case_count(ty->of.ptr);
                for (size_t i = 0; i < count && index == (size_t)-1; i++) {
                    const char *name;
                    size_t len;
                    bool has;
                    wt_valtype payload_ty;
                    if (api.variant_type_case_nth(ty->of.ptr, i, &name, &len, &has, &payload_ty)) {
                        if (len == v->of.variant.discriminant.size &&
                            memcmp(name, v->of.variant.discriminant.data, len) == 0)
                            index = i;
                        if (has)
                            api.valtype_delete(&payload_ty);
                    }
                }
            }
            payload = index == (size_t)-1 ? from_val(ctx, v->of.variant.val, NULL)
                                          : from_child(ctx, v->of.variant.val, ty, T_VARIANT, index);
        }
        return pair(name_str(&v->of.variant.discriminant), payload);
    }
    case V_ENUM:
        return name_str(&v->of.enumeration);
    case V_OPTION:
        if (v->of.option == NULL)
            Py_RETURN_NONE;
        return from_child(ctx, v->of.option, ty, T_OPTION, 0);
    case V_RESULT: {
        PyObject *tag = v->of.result.is_ok ? s_ok : s_err;
        Py_INCREF(tag);
        PyObject *payload;
        if (v->of.result.val == NULL) {
            payload = Py_None;
            Py_INCREF(payload);
        } else {
            payload = from_child(ctx, v->of.result.val, ty, T_RESULT, v->of.result.is_ok ? 0 : 1);
        }
        return pair(tag, payload);
    }
    case V_FLAGS: {
        PyObject *names = PyFrozenSet_New(NULL);
        for (size_t i = 0; names != NULL && i < v->of.flags.size; i++) {
            PyObject *name = name_str(&v->of.flags.data[i]);
            if (name == NULL || PySet_Add(names, name) < 0)
                Py_CLEAR(names);
            Py_XDECREF(name);
        }
        return names;
    }
    case V_RESOURCE: {
        /* Borrowed or owned, the Python side gets the rep; the handle objects made here are
         * deleted now (the argument itself belongs to wasmtime, which drops it after the call). */
        void *host = NULL;
        void *error = api.resource_any_to_host(ctx, v->of.resource, &host);
        if (error != NULL) {
            PyObject *message = take_message(error);
            if (message != NULL) {
                PyErr_Format(PyExc_TypeError, "a resource argument is not a host resource: %U", message);
                Py_DECREF(message);
            }
            return NULL;
        }
        uint32_t rep = api.resource_host_rep(host);
        api.resource_host_delete(host);
        return PyLong_FromUnsignedLong(rep);
    }
    }
    PyErr_Format(PyExc_TypeError, "unsupported component value kind %d", (int)v->kind);
    return NULL;
}

/* ---- Python -> component values (results), walking the result type ------------------------- */

/* On failure these return -1 with a Python error set and leave *out droppable (a bool). */
static int to_val(void *ctx, PyObject *obj, const wt_valtype *ty, wt_val *out);

static void set_droppable(wt_val *v) {
    v->kind = V_BOOL;
    v->of.boolean = false;
}

static int to_name(PyObject *obj, wt_name *out) {
    Py_ssize_t len;
    const char *text = PyUnicode_AsUTF8AndSize(obj, &len); /* TypeError for non-str; fails on surrogates */
    if (text == NULL)
        return -1;
    api.byte_vec_new(out, (size_t)len, text);
    return 0;
}

static int to_int(PyObject *obj, int64_t lo, int64_t hi, int64_t *out) {
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "expected an int, got %.100s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    long long value = PyLong_AsLongLong(obj);
    if (value == -1 && PyErr_Occurred())
        return -1;
    if (value < lo || value > hi) {
        PyErr_Format(PyExc_OverflowError, "%lld is out of range %lld..%lld", value, (long long)lo, (long long)hi);
        return -1;
    }
    *out = value;
    return 0;
}

/* The index of `obj` (a str) among the names of an enum, variant or flags type, or -1. */
static Py_ssize_t find_name(PyObject *obj, const wt_valtype *ty) {
    Py_ssize_t len;
    const char *text = PyUnicode_AsUTF8AndSize(obj, &len);
    if (text == NULL)
        return -2;
    size_t count = ty->kind == T_ENUM      ? api.enum_type_names_count(ty->of.ptr)
                   : ty->kind == T_FLAGS   ? api.flags_type_names_count(ty->of.ptr)
                                           : api.variant_type_case_count(ty->of.ptr);
    for (size_t i = 0; i < count; i++) {
        const char *name = NULL;
        size_t name_len = 0;
        bool found;
        if (ty->kind == T_ENUM) {
            found = api.enum_type_names_nth(ty->of.ptr, i, &name, &name_len);
        } else if (ty->kind == T_FLAGS) {
            found = api.flags_type_names_nth(ty->of.ptr, i, &name, &name_len);
        } else {
            bool has;
            wt_valtype payload;
            found = api.variant_type_case_nth(ty->of.ptr, i, &name, &name_len, &has, &payload);
            if (found && has)
                api.valtype_delete(&payload);
        }
        if (found && name_len == (size_t)len && memcmp(name, text, (size_t)len) == 0)
            return (Py_ssize_t)i;
    }
    PyErr_Format(PyExc_ValueError, "%R is not a case of the type", obj);
    return -1;
}

/* A heap value (option/result/variant payload) converted from `obj` with the type `ty`. */
static int to_boxed(void *ctx, PyObject *obj, const wt_valtype *ty, wt_val **out) {
    wt_val tmp;
    if (to_val(ctx, obj, ty, &tmp) < 0)
        return -1;
    *out = api.val_new(&tmp);
    return 0;
}

static int to_list(void *ctx, PyObject *obj, const wt_valtype *ty, wt_val *out) {
    wt_valtype element;
    api.list_type_element(ty->of.ptr, &element);
    int status = -1;
    if (element.kind == T_U8 && PyObject_CheckBuffer(obj)) {
        Py_buffer view;
        if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) == 0) {
            api.vallist_new_uninit(&out->of.list, (size_t)view.len);
            const uint8_t *bytes = view.buf;
            wt_val *data = out->of.list.data;
            for (Py_ssize_t i = 0; i < view.len; i++) {
                data[i].kind = V_U8;
                data[i].of.u8 = bytes[i];
            }
            PyBuffer_Release(&view);
            out->kind = V_LIST;
            status = 0;
        }
    } else if (PyUnicode_Check(obj) || PyBytes_Check(obj) || PyByteArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "expected a list, got %.100s", Py_TYPE(obj)->tp_name);
    } else {
        PyObject *items = PySequence_Fast(obj, "expected a sequence for a list");
        if (items != NULL) {
            Py_ssize_t n = PySequence_Fast_GET_SIZE(items);
            wt_vallist list;
            api.vallist_new_uninit(&list, (size_t)n);
            Py_ssize_t i = 0;
            for (; i < n; i++)
                if (to_val(ctx, PySequence_Fast_GET_ITEM(items, i), &element, &list.data[i]) < 0)
                    break;
            if (i == n) {
                out->kind = V_LIST;
                out->of.list = list;
                status = 0;
            } else {
                for (; i < n; i++)
                    set_droppable(&list.data[i]);
                api.vallist_delete(&list);
            }
            Py_DECREF(items);
        }
    }
    api.valtype_delete(&element);
    return status;
}

/* A record or tuple from a sequence of exactly the type's arity. */
static int to_fields(void *ctx, PyObject *obj, const wt_valtype *ty, wt_val *out) {
    bool record = ty->kind == T_RECORD;
    size_t n = record ? api.record_type_field_count(ty->of.ptr) : api.tuple_type_types_count(ty->of.ptr);
    PyObject *items = PySequence_Fast(obj, record ? "expected a tuple for a record" : "expected a tuple");
    if (items == NULL)
        return -1;
    if ((size_t)PySequence_Fast_GET_SIZE(items) != n) {
        PyErr_Format(PyExc_ValueError, "expected %zu %s, got %zd", n, record ? "fields" : "items",
                     PySequence_Fast_GET_SIZE(items));
        Py_DECREF(items);
        return -1;
    }
    wt_valrecord rec = {0, NULL};
    wt_vallist tup = {0, NULL};
    if (record)
        api.valrecord_new_uninit(&rec, n);
    else
        api.valtuple_new_uninit(&tup, n);
    size_t i = 0;
    for (; i < n; i++) {
        wt_valtype field;
        const char *name = NULL;
        size_t len = 0;
        bool found = record ? api.record_type_field_nth(ty->of.ptr, i, &name, &len, &field)
                            : api.tuple_type_types_nth(ty->of.ptr, i, &field);
        if (!found) {
            PyErr_SetString(PyExc_RuntimeError, "field type missing");
            break;
        }
        wt_val *slot = record ? &rec.data[i].val : &tup.data[i];
        int status = to_val(ctx, PySequence_Fast_GET_ITEM(items, i), &field, slot);
        api.valtype_delete(&field);
        if (status < 0)
            break;
        if (record)
            api.byte_vec_new(&rec.data[i].name, len, name);
    }
    Py_DECREF(items);
    if (i == n) {
        out->kind = record ? V_RECORD : V_TUPLE;
        if (record)
            out->of.record = rec;
        else
            out->of.tuple = tup;
        return 0;
    }
    for (; i < n; i++) {
        if (record) {
            rec.data[i].name.size = 0;
            rec.data[i].name.data = NULL;
            set_droppable(&rec.data[i].val);
        } else {
            set_droppable(&tup.data[i]);
        }
    }
    if (record)
        api.valrecord_delete(&rec);
    else
        api.valtuple_delete(&tup);
    return -1;
}

/* (tag, payload): a variant case or a result arm. */
static int unpack_pair(PyObject *obj, PyObject **tag, PyObject **payload, const char *what) {
    if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) != 2) {
        PyErr_Format(PyExc_TypeError, "expected a (%s, payload) tuple, got %.100s", what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    *tag = PyTuple_GET_ITEM(obj, 0);
    *payload = PyTuple_GET_ITEM(obj, 1);
    return 0;
}

static int to_variant(void *ctx, PyObject *obj, const wt_valtype *ty, wt_val *out) {
    PyObject *tag, *payload;
    if (unpack_pair(obj, &tag, &payload, "case") < 0)
        return -1;
    Py_ssize_t index = find_name(tag, ty);
    if (index < 0)
        return -1;
    const char *name;
    size_t len;
    bool has;
    wt_valtype payload_ty;
    if (!api.variant_type_case_nth(ty->of.ptr, (size_t)index, &name, &len, &has, &payload_ty)) {
        PyErr_SetString(PyExc_RuntimeError, "variant case missing");
        return -1;
    }
    wt_val *boxed = NULL;
    int status = 0;
    if (has) {
        status = to_boxed(ctx, payload, &payload_ty, &boxed);
        api.valtype_delete(&payload_ty);
    } else if (payload != Py_None) {
        PyErr_Format(PyExc_ValueError, "case %U has no payload", tag);
        status = -1;
    }
    if (status < 0)
        return -1;
    out->kind = V_VARIANT;
    api.byte_vec_new(&out->of.variant.discriminant, len, name);
    out->of.variant.val = boxed;
    return 0;
}

static int to_result(void *ctx, PyObject *obj, const wt_valtype *ty, wt_val *out) {
    PyObject *tag, *payload;
    if (unpack_pair(obj, &tag, &payload, "'ok' or 'err'") < 0)
        return -1;
    int ok = PyUnicode_Check(tag) ? PyUnicode_Compare(tag, s_ok) == 0 : 0;
    if (!ok && !(PyUnicode_Check(tag) && PyUnicode_Compare(tag, s_err) == 0)) {
        PyErr_Format(PyExc_ValueError, "expected 'ok' or 'err', got %R", tag);
        return -1;
    }
    wt_valtype payload_ty;
    bool has = ok ? api.result_type_ok(ty->of.ptr, &payload_ty) : api.result_type_err(ty->of.ptr, &payload_ty);
    wt_val *boxed = NULL;
    if (has) {
        int status = to_boxed(ctx, payload, &payload_ty, &boxed);
        api.valtype_delete(&payload_ty);
        if (status < 0)
            return -1;
    } else if (payload != Py_None) {
        PyErr_Format(PyExc_ValueError, "this result's %U arm has no payload", tag);
        return -1;
    }
    out->kind = V_RESULT;
    out->of.result.is_ok = ok;
    out->of.result.val = boxed;
    return 0;
}

static int to_flags(PyObject *obj, const wt_valtype *ty, wt_val *out) {
    if (PyUnicode_Check(obj)) { /* a str is iterable too: refuse it rather than split it into letters */
        PyErr_SetString(PyExc_TypeError, "expected an iterable of flag names, got a str");
        return -1;
    }
    PyObject *names = PyFrozenSet_New(obj);
    if (names == NULL)
        return -1;
    Py_ssize_t n = PySet_GET_SIZE(names);
    wt_valflags flags;
    api.valflags_new_uninit(&flags, (size_t)n);
    Py_ssize_t i = 0, pos = 0;
    PyObject *name;
    Py_hash_t hash;
    while (_PySet_NextEntry(names, &pos, &name, &hash)) {
        if (find_name(name, ty) < 0 || to_name(name, &flags.data[i]) < 0)
            break;
        i++;
    }
    Py_DECREF(names);
    if (i == n) {
        out->kind = V_FLAGS;
        out->of.flags = flags;
        return 0;
    }
    for (; i < n; i++) {
        flags.data[i].size = 0;
        flags.data[i].data = NULL;
    }
    api.valflags_delete(&flags);
    return -1;
}

static int to_own(void *ctx, PyObject *obj, const wt_valtype *ty, wt_val *out) {
    int64_t rep;
    if (to_int(obj, 0, UINT32_MAX, &rep) < 0)
        return -1;
    size_t i = 0;
    while (i < resource_count && !api.resource_type_equal(resource_types[i].type, ty->of.ptr))
        i++;
    if (i == resource_count) {
        PyErr_SetString(PyExc_TypeError, "an own<R> result whose R is not a resource of define_resource");
        return -1;
    }
    void *host = api.resource_host_new(true, (uint32_t)rep, resource_types[i].id);
    void *any = NULL;
    void *error = api.resource_host_to_any(ctx, host, &any);
    api.resource_host_delete(host);
    if (error != NULL) {
        PyObject *message = take_message(error);
        if (message != NULL) {
            PyErr_Format(PyExc_RuntimeError, "resource_host_to_any failed: %U", message);
            Py_DECREF(message);
        }
        return -1;
    }
    out->kind = V_RESOURCE;
    out->of.resource = any;
    return 0;
}

static int to_val(void *ctx, PyObject *obj, const wt_valtype *ty, wt_val *out) {
    set_droppable(out);
    int64_t value;
    switch (ty->kind) {
    case T_BOOL: {
        if (!PyBool_Check(obj)) {
            PyErr_Format(PyExc_TypeError, "expected a bool, got %.100s", Py_TYPE(obj)->tp_name);
            return -1;
        }
        out->of.boolean = obj == Py_True;
        return 0;
    }
#define INT_CASE(T, V, field, lo, hi)                                                                                  \
    case T:                                                                                                            \
        if (to_int(obj, lo, hi, &value) < 0)                                                                           \
            return -1;                                                                                                 \
        out->kind = V;                                                                                                 \
        out->of.field = value;                                                                                         \
        return 0;
        INT_CASE(T_S8, V_S8, s8, INT8_MIN, INT8_MAX)
        INT_CASE(T_U8, V_U8, u8, 0, UINT8_MAX)
        INT_CASE(T_S16, V_S16, s16, INT16_MIN, INT16_MAX)
        INT_CASE(T_U16, V_U16, u16, 0, UINT16_MAX)
        INT_CASE(T_S32, V_S32, s32, INT32_MIN, INT32_MAX)
        INT_CASE(T_U32, V_U32, u32, 0, UINT32_MAX)
        INT_CASE(T_S64, V_S64, s64, INT64_MIN, INT64_MAX)
#undef INT_CASE
    case T_U64: {
        if (!PyLong_Check(obj)) {
            PyErr_Format(PyExc_TypeError, "expected an int, got %.100s", Py_TYPE(obj)->tp_name);
            return -1;
        }
        unsigned long long u = PyLong_AsUnsignedLongLong(obj);
        if (u == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
        out->kind = V_U64;
        out->of.u64 = u;
        return 0;
    }
    case T_F32:
    case T_F64: {
        double d = PyFloat_AsDouble(obj);
        if (d == -1.0 && PyErr_Occurred())
            return -1;
        if (ty->kind == T_F32) {
            out->kind = V_F32;
            out->of.f32 = (float)d;
        } else {
            out->kind = V_F64;
            out->of.f64 = d;
        }
        return 0;
    }
    case T_CHAR: {
        if (!PyUnicode_Check(obj) || PyUnicode_GET_LENGTH(obj) != 1) {
            PyErr_SetString(PyExc_TypeError, "expected a 1-character str for a char");
            return -1;
        }
        Py_UCS4 c = PyUnicode_READ_CHAR(obj, 0);
        if (c >= 0xD800 && c <= 0xDFFF) {
            PyErr_SetString(PyExc_ValueError, "a surrogate is not a char");
            return -1;
        }
        out->kind = V_CHAR;
        out->of.character = c;
        return 0;
    }
    case T_STRING:
        if (to_name(obj, &out->of.string) < 0)
            return -1;
        out->kind = V_STRING;
        return 0;
    case T_LIST:
        return to_list(ctx, obj, ty, out);
    case T_RECORD:
    case T_TUPLE:
        return to_fields(ctx, obj, ty, out);
    case T_VARIANT:
        return to_variant(ctx, obj, ty, out);
    case T_ENUM: {
        Py_ssize_t index = find_name(obj, ty);
        if (index < 0)
            return -1;
        if (to_name(obj, &out->of.enumeration) < 0)
            return -1;
        out->kind = V_ENUM;
        return 0;
    }
    case T_OPTION: {
        wt_val *boxed = NULL;
        if (obj != Py_None) {
            wt_valtype payload;
            api.option_type_ty(ty->of.ptr, &payload);
            int status = to_boxed(ctx, obj, &payload, &boxed);
            api.valtype_delete(&payload);
            if (status < 0)
                return -1;
        }
        out->kind = V_OPTION;
        out->of.option = boxed;
        return 0;
    }
    case T_RESULT:
        return to_result(ctx, obj, ty, out);
    case T_FLAGS:
        return to_flags(obj, ty, out);
    case T_OWN:
        return to_own(ctx, obj, ty, out);
    }
    PyErr_Format(PyExc_TypeError, "unsupported component result type kind %d", (int)ty->kind);
    return -1;
}

/* ---- host functions ------------------------------------------------------------------------- */

typedef struct {
    PyObject *fn;
    char name[]; /* for error messages */
} host_env;

static host_env *env_new(PyObject *fn, const char *name) {
    size_t len = strlen(name);
    host_env *env = PyMem_RawMalloc(sizeof(host_env) + len + 1);
    if (env == NULL)
        return NULL;
    env->fn = Py_NewRef(fn);
    memcpy(env->name, name, len + 1);
    return env;
}

static void env_free(void *data) {
    host_env *env = data;
    /* The linker may drop its functions in any thread, or after the interpreter is gone. */
    if (!_Py_IsFinalizing()) {
        PyGILState_STATE gil = PyGILState_Ensure();
        Py_DECREF(env->fn);
        PyGILState_Release(gil);
    }
    PyMem_RawFree(env);
}

/* The pending Python exception goes to state.error (unless one is there already); the guest call
 * fails with an error naming the function. GIL held; no Python error is left set. */
static void *host_failed(PyObject *state, const char *name) {
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (value != NULL && traceback != NULL)
        PyException_SetTraceback(value, traceback);
    if (state != NULL && value != NULL) {
        PyObject *existing = PyObject_GetAttr(state, s_error);
        if (existing == NULL) {
            PyErr_Clear();
        }
        if (existing == NULL || existing == Py_None) {
            if (PyObject_SetAttr(state, s_error, value) < 0)
                PyErr_WriteUnraisable(state);
        }
        Py_XDECREF(existing);
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    PyErr_Clear();
    char text[300];
    snprintf(text, sizeof text, "host function %s failed", name);
    return api.error_new(text);
}

/* The types of the parameters whose conversion needs them (compound values). */
static bool needs_type(const wt_val *v) {
    switch (v->kind) {
    case V_LIST:
        return !(v->of.list.size > 0 && v->of.list.data[0].kind == V_U8);
    case V_RECORD:
    case V_TUPLE:
    case V_VARIANT:
    case V_OPTION:
    case V_RESULT:
        return true;
    }
    return false;
}

#define MAX_INLINE_ARGS 8

static void *call_host(void *data, void *ctx, const void *ty, wt_val *args, size_t nargs, wt_val *results,
                       size_t nresults) {
    host_env *env = data;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *state = api.context_get_data(ctx);
    PyObject *inline_args[1 + MAX_INLINE_ARGS];
    PyObject **call_args = nargs <= MAX_INLINE_ARGS ? inline_args : PyMem_Malloc((1 + nargs) * sizeof(PyObject *));
    void *error = NULL;
    size_t made = 0;
    if (call_args == NULL) {
        PyErr_NoMemory();
        error = host_failed(state, env->name);
        goto done;
    }
    call_args[0] = state != NULL ? state : Py_None;
    for (; made < nargs; made++) {
        wt_valtype param;
        bool typed = false;
        if (needs_type(&args[made])) {
            const char *name;
            size_t len;
            typed = api.func_type_param_nth(ty, made, &name, &len, &param);
        }
        PyObject *arg = from_val(ctx, &args[made], typed ? &param : NULL);
        if (typed)
            api.valtype_delete(&param);
        if (arg == NULL)
            break;
        call_args[1 + made] = arg;
    }
    if (made < nargs) {
        error = host_failed(state, env->name);
        goto done;
    }
    PyObject *result = PyObject_Vectorcall(env->fn, call_args, 1 + nargs, NULL);
    if (result == NULL) {
        error = host_failed(state, env->name);
        goto done;
    }
    if (nresults > 0) {
        wt_valtype result_ty;
        if (!api.func_type_result(ty, &result_ty)) {
            PyErr_SetString(PyExc_RuntimeError, "the function type has no result");
        } else {
            int status = to_val(ctx, result, &result_ty, &results[0]);
            api.valtype_delete(&result_ty);
            if (status == 0) {
                Py_DECREF(result);
                goto done;
            }
        }
        Py_DECREF(result);
        error = host_failed(state, env->name);
        goto done;
    }
    Py_DECREF(result);
done:
    for (size_t i = 0; i < made; i++)
        Py_DECREF(call_args[1 + i]);
    if (call_args != NULL && call_args != inline_args)
        PyMem_Free(call_args);
    PyGILState_Release(gil);
    return error;
}

static void *drop_resource(void *data, void *ctx, uint32_t rep) {
    host_env *env = data;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *state = api.context_get_data(ctx);
    void *error = NULL;
    PyObject *number = PyLong_FromUnsignedLong(rep);
    PyObject *result = NULL;
    if (number != NULL) {
        PyObject *call[] = {state != NULL ? state : Py_None, number};
        result = PyObject_Vectorcall(env->fn, call, 2, NULL);
        Py_DECREF(number);
    }
    if (result == NULL)
        error = host_failed(state, env->name);
    Py_XDECREF(result);
    PyGILState_Release(gil);
    return error;
}

static int require_init(void) {
    if (!initialised) {
        PyErr_SetString(PyExc_RuntimeError, "_components.init() was not called");
        return -1;
    }
    return 0;
}

/* A RuntimeError with the text of a wasmtime error (freed). */
static PyObject *raise_error(const char *what, void *error) {
    PyObject *message = take_message(error);
    if (message != NULL) {
        PyErr_Format(PyExc_RuntimeError, "%s: %U", what, message);
        Py_DECREF(message);
    }
    return NULL;
}

PyDoc_STRVAR(define_func_doc, "define_func(instance, name, fn) -> None\n\n"
"Define function `name` on the component linker instance (address): each call from the guest runs\n"
"fn(state, *args), `state` being the object given to run(). Raises RuntimeError if wasmtime refuses.");

static PyObject *define_func(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long instance;
    const char *name;
    Py_ssize_t len;
    PyObject *fn;
    if (!PyArg_ParseTuple(args, "Ks#O", &instance, &name, &len, &fn) || require_init() < 0)
        return NULL;
    if (!PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "fn must be callable");
        return NULL;
    }
    host_env *env = env_new(fn, name);
    if (env == NULL)
        return PyErr_NoMemory();
    /* On failure wasmtime drops the closure holding `env`, which runs the finalizer. */
    void *error = api.add_func((void *)(uintptr_t)instance, name, (size_t)len, call_host, env, env_free);
    if (error != NULL)
        return raise_error(name, error);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(define_resource_doc, "define_resource(instance, name, type_id, dtor) -> None\n\n"
"Define resource `name` on the component linker instance (address) as the host resource type\n"
"`type_id`; dtor(state, rep) runs when the guest drops an owned handle.");

static PyObject *define_resource(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long instance;
    const char *name;
    Py_ssize_t len;
    unsigned int type_id;
    PyObject *dtor;
    if (!PyArg_ParseTuple(args, "Ks#IO", &instance, &name, &len, &type_id, &dtor) || require_init() < 0)
        return NULL;
    if (!PyCallable_Check(dtor)) {
        PyErr_SetString(PyExc_TypeError, "dtor must be callable");
        return NULL;
    }
    size_t i = 0;
    while (i < resource_count && resource_types[i].id != type_id)
        i++;
    if (i == resource_count) {
        if (resource_count == resource_cap) {
            size_t cap = resource_cap ? resource_cap * 2 : 16;
            void *grown = PyMem_RawRealloc(resource_types, cap * sizeof resource_types[0]);
            if (grown == NULL)
                return PyErr_NoMemory();
            resource_types = grown;
            resource_cap = cap;
        }
        resource_types[i].id = type_id;
        resource_types[i].type = api.resource_type_new_host(type_id);
        resource_count++;
    }
    host_env *env = env_new(dtor, name);
    if (env == NULL)
        return PyErr_NoMemory();
    void *error = api.add_resource((void *)(uintptr_t)instance, name, (size_t)len, resource_types[i].type,
                                   drop_resource, env, env_free);
    if (error != NULL)
        return raise_error(name, error);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(export_index_doc, "export_index(component, instance, func) -> int\n\n"
"The address of the export index of function `func` of exported instance `instance` (\"\": a function\n"
"the component exports itself), or 0 if absent; free it with free_export_index.");

static PyObject *export_index(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long component;
    const char *instance, *func;
    Py_ssize_t instance_len, func_len;
    if (!PyArg_ParseTuple(args, "Ks#s#", &component, &instance, &instance_len, &func, &func_len) ||
        require_init() < 0)
        return NULL;
    void *parent = NULL;
    if (instance_len > 0) {
        parent = api.get_export_index((void *)(uintptr_t)component, NULL, instance, (size_t)instance_len);
        if (parent == NULL)
            return PyLong_FromLong(0);
    }
    void *index = api.get_export_index((void *)(uintptr_t)component, parent, func, (size_t)func_len);
    if (parent != NULL)
        api.export_index_delete(parent);
    return PyLong_FromUnsignedLongLong((uint64_t)(uintptr_t)index);
}

static PyObject *free_export_index(PyObject *self, PyObject *arg) {
    (void)self;
    unsigned long long index = PyLong_AsUnsignedLongLong(arg);
    if ((index == (unsigned long long)-1 && PyErr_Occurred()) || require_init() < 0)
        return NULL;
    if (index != 0)
        api.export_index_delete((void *)(uintptr_t)index);
    Py_RETURN_NONE;
}

enum { RUN_OK = 0, RUN_INSTANTIATE_FAILED = 1, RUN_CALL_FAILED = 2, RUN_NOT_A_FUNCTION = 3 };

PyDoc_STRVAR(run_doc, "run(engine, linker, component, export_index, state, memory, ticks, args)\n"
"    -> (status, message, instantiate_ns, run_ns)\n\n"
"One request in a new store whose data is `state`: limits (one linear memory of `memory` bytes),\n"
"epoch deadline `ticks`, instantiate through the component linker, call the exported function with\n"
"`args` ((type_id, rep) pairs, each an owned host resource), post-return, delete the store.\n"
"Status 0 ok, 1 instantiation failed, 2 the call failed, 3 the export is not a function; message\n"
"is wasmtime's error text for 1 and 2. An export index of 0 only instantiates.");

static PyObject *run(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError,
                        "run(engine, linker, component, export_index, state, memory, ticks, args)");
        return NULL;
    }
    if (require_init() < 0)
        return NULL;
    unsigned long long engine = PyLong_AsUnsignedLongLong(args[0]);
    unsigned long long linker = PyLong_AsUnsignedLongLong(args[1]);
    unsigned long long component = PyLong_AsUnsignedLongLong(args[2]);
    unsigned long long index = PyLong_AsUnsignedLongLong(args[3]);
    PyObject *state = args[4];
    long long memory = PyLong_AsLongLong(args[5]);
    unsigned long long ticks = PyLong_AsUnsignedLongLong(args[6]);
    if (PyErr_Occurred())
        return NULL;
    if (!engine || !linker || !component) {
        PyErr_SetString(PyExc_ValueError, "null engine, linker or component");
        return NULL;
    }
    PyObject *handles = PySequence_Fast(args[7], "args must be a sequence of (type_id, rep)");
    if (handles == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(handles);
    if (count > MAX_INLINE_ARGS) {
        Py_DECREF(handles);
        PyErr_Format(PyExc_ValueError, "at most %d arguments", MAX_INLINE_ARGS);
        return NULL;
    }
    uint32_t ids[MAX_INLINE_ARGS], reps[MAX_INLINE_ARGS];
    for (Py_ssize_t i = 0; i < count; i++) {
        unsigned int id, rep;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(handles, i), "II", &id, &rep)) {
            Py_DECREF(handles);
            return NULL;
        }
        ids[i] = id;
        reps[i] = rep;
    }
    Py_DECREF(handles);

    int status = RUN_OK;
    void *error = NULL;
    int64_t instantiate_ns = 0, run_ns = 0;
    wt_val values[MAX_INLINE_ARGS];
    Py_ssize_t made = 0;
    Py_BEGIN_ALLOW_THREADS
    void *store = api.store_new((void *)(uintptr_t)engine, state, NULL);
    void *ctx = api.store_context(store);
    /* One linear memory: the store limit bounds each memory, and the host's memory budget reserves one
     * limit per request. Every toolchain's component defines one (its other core modules import it);
     * a component that makes a second fails to instantiate instead of doubling what it may hold.
     * 20 core instances: each takes a slot of the shared pool (a module takes one), and componentize-py's
     * output, the largest seen, needs 14 (fewer than 11 fail); componentize-js's needs fewer. */
    api.store_limiter(store, memory, -1, 20, 100, 1);
    api.set_epoch_deadline(ctx, ticks);
    int64_t t0 = now_ns();
    wt_cinstance instance;
    error = api.linker_instantiate((void *)(uintptr_t)linker, ctx, (void *)(uintptr_t)component, &instance);
    int64_t t1 = now_ns();
    instantiate_ns = t1 - t0;
    wt_cfunc func;
    if (error != NULL) {
        status = RUN_INSTANTIATE_FAILED;
    } else if (index == 0) {
        /* instantiate only: what creating the isolate costs (bench/, `isolate bench`) */
    } else if (!api.instance_get_func(&instance, ctx, (void *)(uintptr_t)index, &func)) {
        status = RUN_NOT_A_FUNCTION;
    } else {
        for (; made < count && error == NULL; made++) {
            void *host = api.resource_host_new(true, reps[made], ids[made]);
            void *any = NULL;
            error = api.resource_host_to_any(ctx, host, &any);
            api.resource_host_delete(host);
            values[made].kind = V_RESOURCE;
            values[made].of.resource = any;
            if (error != NULL)
                set_droppable(&values[made]);
        }
        if (error == NULL) {
            /* The result slot count must match the type: wasi:http handlers return nothing, others may. */
            void *fty = api.func_type(&func, ctx);
            wt_valtype result_ty;
            size_t nresults = 0;
            if (fty != NULL) {
                if (api.func_type_result(fty, &result_ty)) {
                    nresults = 1;
                    api.valtype_delete(&result_ty);
                }
                api.func_type_delete(fty);
            }
            wt_val results[1];
            set_droppable(&results[0]);
            error = api.func_call(&func, ctx, values, (size_t)count, results, nresults);
            if (error == NULL) {
                error = api.func_post_return(&func, ctx);
                api.val_delete(&results[0]);
            }
        }
        run_ns = now_ns() - t1;
        if (error != NULL)
            status = RUN_CALL_FAILED;
    }
    for (Py_ssize_t i = 0; i < made; i++)
        api.val_delete(&values[i]);
    api.store_delete(store);
    Py_END_ALLOW_THREADS

    PyObject *message = Py_None;
    Py_INCREF(message);
    if (error != NULL) {
        Py_DECREF(message);
        message = take_message(error);
        if (message == NULL)
            return NULL;
    }
    PyObject *result = Py_BuildValue("(iNLL)", status, message, (long long)instantiate_ns, (long long)run_ns);
    return result;
}

PyDoc_STRVAR(init_doc, "init(addresses) -> None\n\n"
"Take the addresses of the C API functions: a mapping of name to address (see `names()`).");

static PyObject *init(PyObject *self, PyObject *addresses) {
    (void)self;
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
    initialised = true;
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
    return Py_BuildValue("{s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n}",
                         "val", (Py_ssize_t)sizeof(wt_val), "val_of", (Py_ssize_t)offsetof(wt_val, of),
                         "valtype", (Py_ssize_t)sizeof(wt_valtype), "valtype_of", (Py_ssize_t)offsetof(wt_valtype, of),
                         "record_entry", (Py_ssize_t)sizeof(wt_record_entry),
                         "record_entry_val", (Py_ssize_t)offsetof(wt_record_entry, val),
                         "variant", (Py_ssize_t)sizeof(wt_valvariant),
                         "variant_val", (Py_ssize_t)offsetof(wt_valvariant, val),
                         "result", (Py_ssize_t)sizeof(wt_valresult),
                         "result_val", (Py_ssize_t)offsetof(wt_valresult, val),
                         "vallist", (Py_ssize_t)sizeof(wt_vallist),
                         "instance", (Py_ssize_t)sizeof(wt_cinstance), "func", (Py_ssize_t)sizeof(wt_cfunc));
}

static PyMethodDef methods[] = {
    {"init", init, METH_O, init_doc},
    {"names", names, METH_NOARGS, "The C API functions `init` needs, by name."},
    {"layout", layout, METH_NOARGS, "Sizes and offsets of the wasmtime structs this file declares."},
    {"define_func", define_func, METH_VARARGS, define_func_doc},
    {"define_resource", define_resource, METH_VARARGS, define_resource_doc},
    {"export_index", export_index, METH_VARARGS, export_index_doc},
    {"free_export_index", free_export_index, METH_O, "free_export_index(index): free an export_index result."},
    {"run", (PyCFunction)(void (*)(void))run, METH_FASTCALL, run_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_components", "Component-model host functions in Python on wasmtime's C API.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__components(void) {
    struct {
        PyObject **slot;
        const char *text;
    } strings[] = {{&s_error, "error"}, {&s_ok, "ok"}, {&s_err, "err"}};
    for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++) {
        *strings[i].slot = PyUnicode_InternFromString(strings[i].text);
        if (*strings[i].slot == NULL)
            return NULL;
    }
    return PyModule_Create(&module);
}
