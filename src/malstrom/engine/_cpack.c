/* malstrom.engine._cpack: the per-record work of packing record columns, in C.
 *
 * The rules (which classes pack, and how) and a pure-Python twin of every function here are
 * in malstrom/engine/packing.py, which documents the contract. These functions move
 * references: they read and write slots through the classes' member descriptors and
 * instance dicts, and create instances with object.__new__, as unpickling does; and they
 * turn columns of str into UTF-8 bytes and back. No user code runs here: names are compared
 * as str, and new instances' slots start empty (no __del__ of an old value runs).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_TYPES 255

static PyObject *empty_tuple;

static PyObject *
list_of(PyObject *obj, const char *what)
{
    if (!PyList_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a list", what);
        return NULL;
    }
    return obj;
}

PyDoc_STRVAR(group_doc,
"group(col)\n--\n\n"
"(types, codes or None, records per type), or None above 255 types.");

static PyObject *
group(PyObject *self, PyObject *col)
{
    PyObject *fast = PySequence_Fast(col, "group: the column must be a sequence");
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    PyObject *kinds = PyList_New(0), *groups = PyList_New(0), *result = NULL;
    PyObject *codes = PyBytes_FromStringAndSize(NULL, n);
    if (kinds == NULL || groups == NULL || codes == NULL)
        goto done;
    unsigned char *code = (unsigned char *)PyBytes_AS_STRING(codes);
    PyTypeObject *last = NULL;
    Py_ssize_t last_i = 0, k = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *x = PySequence_Fast_GET_ITEM(fast, i);
        PyTypeObject *t = Py_TYPE(x);
        Py_ssize_t j;
        if (t == last) {
            j = last_i;
        }
        else {
            for (j = 0; j < k; j++) {
                if ((PyTypeObject *)PyList_GET_ITEM(kinds, j) == t)
                    break;
            }
            if (j == k) {
                if (k == MAX_TYPES) {
                    result = Py_None;
                    Py_INCREF(result);
                    goto done;
                }
                PyObject *g = PyList_New(0);
                if (g == NULL || PyList_Append(kinds, (PyObject *)t) < 0
                    || PyList_Append(groups, g) < 0) {
                    Py_XDECREF(g);
                    goto done;
                }
                Py_DECREF(g);
                k++;
            }
            last = t;
            last_i = j;
        }
        if (PyList_Append(PyList_GET_ITEM(groups, j), x) < 0)
            goto done;
        code[i] = (unsigned char)j;
    }
    if (k > 1)
        result = PyTuple_Pack(3, kinds, codes, groups);
    else
        result = PyTuple_Pack(3, kinds, Py_None, groups);
done:
    Py_DECREF(fast);
    Py_XDECREF(kinds);
    Py_XDECREF(groups);
    Py_XDECREF(codes);
    return result;
}

/* New lists, one per field, each of length n (filled by the caller with PyList_SET_ITEM). */
static PyObject *
new_columns(Py_ssize_t fields, Py_ssize_t n)
{
    PyObject *columns = PyList_New(fields);
    if (columns == NULL)
        return NULL;
    for (Py_ssize_t j = 0; j < fields; j++) {
        PyObject *c = PyList_New(n);
        if (c == NULL) {
            Py_DECREF(columns);
            return NULL;
        }
        PyList_SET_ITEM(columns, j, c);
    }
    return columns;
}

PyDoc_STRVAR(extract_slots_doc,
"extract_slots(objs, descriptors)\n--\n\n"
"Per member descriptor, its value on every object; None if a slot is unset on one.");

static PyObject *
extract_slots(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "extract_slots(objs, descriptors)");
        return NULL;
    }
    PyObject *objs = list_of(args[0], "extract_slots: objs");
    if (objs == NULL)
        return NULL;
    PyObject *descrs = PySequence_Tuple(args[1]);
    if (descrs == NULL)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(objs), f = PyTuple_GET_SIZE(descrs);
    PyObject *columns = new_columns(f, n);
    if (columns == NULL)
        goto fail;
    for (Py_ssize_t j = 0; j < f; j++) {
        PyObject *d = PyTuple_GET_ITEM(descrs, j);
        descrgetfunc get = Py_TYPE(d)->tp_descr_get;
        if (get == NULL) {
            PyErr_SetString(PyExc_TypeError, "extract_slots: not a descriptor");
            goto fail;
        }
        PyObject *col = PyList_GET_ITEM(columns, j);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (i >= PyList_GET_SIZE(objs)) {
                PyErr_SetString(PyExc_RuntimeError, "extract_slots: objs changed size");
                goto fail;
            }
            PyObject *o = PyList_GET_ITEM(objs, i);
            PyObject *v = get(d, o, (PyObject *)Py_TYPE(o));
            if (v == NULL) {
                if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
                    PyErr_Clear();
                    Py_DECREF(columns);
                    Py_DECREF(descrs);
                    Py_RETURN_NONE;
                }
                goto fail;
            }
            PyList_SET_ITEM(col, i, v);
        }
    }
    Py_DECREF(descrs);
    return columns;
fail:
    Py_XDECREF(columns);  /* unset items are NULL: list dealloc skips them */
    Py_DECREF(descrs);
    return NULL;
}

/* Per name, its value in every object's items: the object's own items when `own` (exact
 * dicts: records that are dicts), else its instance __dict__'s. None unless every one holds
 * exactly `names`, in that order. */
static PyObject *
extract_items(PyObject *const *args, Py_ssize_t nargs, int own, const char *fn)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s(objs, names)", fn);
        return NULL;
    }
    PyObject *objs = list_of(args[0], fn);
    if (objs == NULL)
        return NULL;
    PyObject *names = PySequence_Tuple(args[1]);
    if (names == NULL)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(objs), f = PyTuple_GET_SIZE(names);
    for (Py_ssize_t j = 0; j < f; j++) {
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(names, j))) {
            PyErr_Format(PyExc_TypeError, "%s: names must be str", fn);
            Py_DECREF(names);
            return NULL;
        }
    }
    PyObject *columns = new_columns(f, n);
    if (columns == NULL) {
        Py_DECREF(names);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i >= PyList_GET_SIZE(objs)) {
            PyErr_Format(PyExc_RuntimeError, "%s: objs changed size", fn);
            goto fail;
        }
        PyObject *o = PyList_GET_ITEM(objs, i);
        PyObject *d;
        if (own) {
            d = o;
            Py_INCREF(d);
        }
        else {
            d = PyObject_GenericGetDict(o, NULL);
            if (d == NULL)
                goto fail;
        }
        int same = PyDict_CheckExact(d) && PyDict_GET_SIZE(d) == f;
        Py_ssize_t pos = 0, j = 0;
        PyObject *key, *value;
        while (same && PyDict_Next(d, &pos, &key, &value)) {
            PyObject *name = PyTuple_GET_ITEM(names, j);
            if (key != name
                && !(PyUnicode_CheckExact(key) && PyUnicode_Compare(key, name) == 0)) {
                same = 0;
                break;
            }
            Py_INCREF(value);
            PyList_SET_ITEM(PyList_GET_ITEM(columns, j), i, value);
            j++;
        }
        Py_DECREF(d);
        if (PyErr_Occurred())
            goto fail;
        if (!same) {
            Py_DECREF(columns);
            Py_DECREF(names);
            Py_RETURN_NONE;
        }
    }
    Py_DECREF(names);
    return columns;
fail:
    Py_DECREF(columns);
    Py_DECREF(names);
    return NULL;
}

PyDoc_STRVAR(extract_dict_doc,
"extract_dict(objs, names)\n--\n\n"
"Per name, its value in every object's __dict__; None unless every __dict__ has exactly\n"
"``names``, in that order.");

static PyObject *
extract_dict(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return extract_items(args, nargs, 0, "extract_dict");
}

PyDoc_STRVAR(extract_map_doc,
"extract_map(dicts, names)\n--\n\n"
"Per name, its value in every dict (exact dicts); None unless every one has exactly\n"
"``names``, in that order.");

static PyObject *
extract_map(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return extract_items(args, nargs, 1, "extract_map");
}

static int
is_atom(PyObject *x)
{
    PyTypeObject *t = Py_TYPE(x);
    return t == &PyUnicode_Type || t == &PyLong_Type || t == &PyFloat_Type
           || t == &PyBool_Type || t == &PyBytes_Type || t == Py_TYPE(Py_None);
}

PyDoc_STRVAR(atoms_doc,
"atoms(col)\n--\n\n"
"Whether col is a list of plain values only: exact str, int, float, bool, bytes or None,\n"
"or exact tuples of those.");

static PyObject *
atoms(PyObject *self, PyObject *col)
{
    if (!PyList_CheckExact(col))
        Py_RETURN_FALSE;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(col); i++) {
        PyObject *x = PyList_GET_ITEM(col, i);
        if (is_atom(x))
            continue;
        if (!PyTuple_CheckExact(x))
            Py_RETURN_FALSE;
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(x); j++) {
            if (!is_atom(PyTuple_GET_ITEM(x, j)))
                Py_RETURN_FALSE;
        }
    }
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(same_doc,
"same(a, b)\n--\n\n"
"Whether lists a and b hold the very same objects, in the same order.");

static PyObject *
same(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_Check(args[0]) || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "same(a: list, b: list)");
        return NULL;
    }
    PyObject *a = args[0], *b = args[1];
    if (PyList_GET_SIZE(a) != PyList_GET_SIZE(b))
        Py_RETURN_FALSE;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(a); i++) {
        if (i >= PyList_GET_SIZE(b) || PyList_GET_ITEM(a, i) != PyList_GET_ITEM(b, i))
            Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(uniform_doc,
"uniform(col)\n--\n\n"
"Whether col is a non-empty list whose items are all the very same object.");

static PyObject *
uniform(PyObject *self, PyObject *col)
{
    if (!PyList_Check(col) || PyList_GET_SIZE(col) == 0)
        Py_RETURN_FALSE;
    PyObject *first = PyList_GET_ITEM(col, 0);
    for (Py_ssize_t i = 1; i < PyList_GET_SIZE(col); i++) {
        if (PyList_GET_ITEM(col, i) != first)
            Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

/* The columns as a tuple of lists of at least n items each (checked once, up front). */
static PyObject *
columns_of(PyObject *obj, Py_ssize_t fields, Py_ssize_t n)
{
    PyObject *cols = PySequence_Tuple(obj);
    if (cols == NULL)
        return NULL;
    if (PyTuple_GET_SIZE(cols) != fields) {
        PyErr_Format(PyExc_ValueError, "%zd columns for %zd fields", PyTuple_GET_SIZE(cols),
                     fields);
        Py_DECREF(cols);
        return NULL;
    }
    for (Py_ssize_t j = 0; j < fields; j++) {
        PyObject *c = PyTuple_GET_ITEM(cols, j);
        if (!PyList_Check(c) || PyList_GET_SIZE(c) != n) {
            PyErr_Format(PyExc_ValueError, "column %zd is not a list of %zd values", j, n);
            Py_DECREF(cols);
            return NULL;
        }
    }
    return cols;
}

static PyObject *
new_instance(PyObject *cls)
{
    return PyBaseObject_Type.tp_new((PyTypeObject *)cls, empty_tuple, NULL);
}

PyDoc_STRVAR(build_slots_doc,
"build_slots(cls, descriptors, columns, n)\n--\n\n"
"n new instances of cls (object.__new__) with the slots set from the columns.");

static PyObject *
build_slots(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyType_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "build_slots(cls, descriptors, columns, n)");
        return NULL;
    }
    Py_ssize_t n = PyLong_AsSsize_t(args[3]);
    if (n < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "build_slots: n < 0");
        return NULL;
    }
    PyObject *descrs = PySequence_Tuple(args[1]);
    if (descrs == NULL)
        return NULL;
    Py_ssize_t f = PyTuple_GET_SIZE(descrs);
    PyObject *out = NULL, *cols = columns_of(args[2], f, n);
    if (cols == NULL)
        goto done;
    for (Py_ssize_t j = 0; j < f; j++) {
        if (Py_TYPE(PyTuple_GET_ITEM(descrs, j))->tp_descr_set == NULL) {
            PyErr_SetString(PyExc_TypeError, "build_slots: not a data descriptor");
            goto done;
        }
    }
    out = PyList_New(n);
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = new_instance(args[0]);
        if (o == NULL)
            goto fail;
        PyList_SET_ITEM(out, i, o);
        for (Py_ssize_t j = 0; j < f; j++) {
            PyObject *d = PyTuple_GET_ITEM(descrs, j);
            PyObject *v = PyList_GET_ITEM(PyTuple_GET_ITEM(cols, j), i);
            if (Py_TYPE(d)->tp_descr_set(d, o, v) < 0)
                goto fail;
        }
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    Py_DECREF(descrs);
    Py_XDECREF(cols);
    return out;
}

/* n new objects holding `names` from the columns: instances of `cls` (object.__new__) with
 * the items in their __dict__, or plain dicts when `cls` is NULL. */
static PyObject *
build_items(PyObject *cls, PyObject *names_arg, PyObject *cols_arg, PyObject *n_arg,
            const char *fn)
{
    Py_ssize_t n = PyLong_AsSsize_t(n_arg);
    if (n < 0) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "%s: n < 0", fn);
        return NULL;
    }
    PyObject *names = PySequence_Tuple(names_arg);
    if (names == NULL)
        return NULL;
    Py_ssize_t f = PyTuple_GET_SIZE(names);
    PyObject *out = NULL, *cols = columns_of(cols_arg, f, n);
    if (cols == NULL)
        goto done;
    for (Py_ssize_t j = 0; j < f; j++) {
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(names, j))) {
            PyErr_Format(PyExc_TypeError, "%s: names must be str", fn);
            goto done;
        }
    }
    out = PyList_New(n);
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = cls == NULL ? PyDict_New() : new_instance(cls);
        if (o == NULL)
            goto fail;
        PyList_SET_ITEM(out, i, o);
        if (f == 0)
            continue;
        PyObject *d = cls == NULL ? Py_NewRef(o) : PyObject_GenericGetDict(o, NULL);
        if (d == NULL)
            goto fail;
        for (Py_ssize_t j = 0; j < f; j++) {
            PyObject *v = PyList_GET_ITEM(PyTuple_GET_ITEM(cols, j), i);
            if (PyDict_SetItem(d, PyTuple_GET_ITEM(names, j), v) < 0) {
                Py_DECREF(d);
                goto fail;
            }
        }
        Py_DECREF(d);
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    Py_DECREF(names);
    Py_XDECREF(cols);
    return out;
}

PyDoc_STRVAR(build_dict_doc,
"build_dict(cls, names, columns, n)\n--\n\n"
"n new instances of cls (object.__new__) whose __dict__ holds names from the columns.");

static PyObject *
build_dict(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyType_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "build_dict(cls, names, columns, n)");
        return NULL;
    }
    return build_items(args[0], args[1], args[2], args[3], "build_dict");
}

PyDoc_STRVAR(build_map_doc,
"build_map(names, columns, n)\n--\n\n"
"n new dicts holding names from the columns.");

static PyObject *
build_map(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "build_map(names, columns, n)");
        return NULL;
    }
    return build_items(NULL, args[0], args[1], args[2], "build_map");
}

PyDoc_STRVAR(interleave_doc,
"interleave(codes, groups)\n--\n\n"
"The records in column order: record i is the next one of groups[codes[i]].");

static PyObject *
interleave(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "interleave(codes: bytes, groups)");
        return NULL;
    }
    PyObject *groups = PySequence_Tuple(args[1]);
    if (groups == NULL)
        return NULL;
    Py_ssize_t k = PyTuple_GET_SIZE(groups), n = PyBytes_GET_SIZE(args[0]);
    const unsigned char *code = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t *next = PyMem_Calloc(k ? k : 1, sizeof(Py_ssize_t));
    PyObject *out = NULL;
    if (next == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j < k; j++) {
        if (!PyList_Check(PyTuple_GET_ITEM(groups, j))) {
            PyErr_SetString(PyExc_TypeError, "interleave: groups must be lists");
            goto done;
        }
    }
    out = PyList_New(n);
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t j = code[i];
        PyObject *g = j < k ? PyTuple_GET_ITEM(groups, j) : NULL;
        if (g == NULL || next[j] >= PyList_GET_SIZE(g)) {
            PyErr_Format(PyExc_ValueError, "interleave: record %zd names group %zd, which "
                         "has no record left", i, j);
            Py_CLEAR(out);
            goto done;
        }
        PyObject *x = PyList_GET_ITEM(g, next[j]++);
        Py_INCREF(x);
        PyList_SET_ITEM(out, i, x);
    }
done:
    PyMem_Free(next);
    Py_DECREF(groups);
    return out;
}

/* ----- columns of str: UTF-8 bytes one after another, and their lengths ------------------
 *
 * sizes: per string its UTF-8 length, one byte when below 255, else 255 and four bytes
 * little-endian. Decoding a column of keys (cache=True) goes through a small cache of short
 * ASCII strings it made (STR_SLOTS slots, STR_WAYS per bucket, at most STR_MAX_INTERN bytes
 * each): a key that arrives again (keys do, batch after batch) is the cached object, not a
 * new one. So a key that crosses costs no allocation, no free, and no hashing where keyed
 * state looks it up (the object keeps its hash). A slot keeps the string's hash beside it,
 * so a miss reads one bucket (one cache line) and no string. Other columns (fields, values)
 * are not cached: strings that never repeat (digests, ids) would only evict the keys. The
 * cache holds at most STR_SLOTS strings (~5 MB); it is process-wide and guarded by the GIL. */
#define STR_LONG 255
#define STR_MAX_INTERN 64
#define STR_WAYS 4
#define STR_SLOTS (1 << 15)

typedef struct {
    uint64_t hash;
    PyObject *str;
} str_slot;

static str_slot *str_cache;  /* STR_SLOTS slots, buckets aligned to 64 bytes; never freed */

/* Keys that never repeat (an id per event) would only pay for the cache: a miss allocates
 * as before and also evicts (and frees) a cold string. So the cache watches its own hit
 * rate (over the last few thousand lookups) and, below STR_MIN_HITS, looks up only one key
 * in STR_SAMPLE: enough to see the keys start repeating, and to let them in when they do. */
#define STR_WINDOW 4096
#define STR_MIN_HITS 4  /* per 16 lookups: 25% */
#define STR_SAMPLE 16
static uint32_t str_lookups, str_hits, str_skip;
static int str_bypass;

static inline uint64_t
str_mix(uint64_t h, uint64_t w)
{
    w *= 0x87C37B91114253D5ULL;
    h ^= (w << 31) | (w >> 33);
    return ((h << 27) | (h >> 37)) * 5 + 0x52DCE729;
}

static inline uint64_t
str_hash(const unsigned char *p, Py_ssize_t n, uint64_t *high_bits)
{
    /* Not cryptographic: only spreads keys over buckets (a collision costs a memcmp).
     * Murmur3-style mixing per 8 bytes, and its 64-bit finalizer. */
    uint64_t h = (uint64_t)n, hi = 0, w;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, p + i, 8);
        hi |= w;
        h = str_mix(h, w);
    }
    if (i < n) {
        w = 0;
        memcpy(&w, p + i, (size_t)(n - i));
        hi |= w;
        h = str_mix(h, w);
    }
    *high_bits = hi & 0x8080808080808080ULL;
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDULL;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ULL;
    return h ^ (h >> 33);
}

/* A str of the n UTF-8 bytes at p (new reference); through the cache when `cache`. */
static PyObject *
str_from(const unsigned char *p, Py_ssize_t n, int cache)
{
    if (!cache || n > STR_MAX_INTERN || n == 0 || (str_bypass && ++str_skip % STR_SAMPLE))
        return PyUnicode_DecodeUTF8((const char *)p, n, "strict");
    if (++str_lookups == STR_WINDOW) {
        str_bypass = str_hits * 16 < (uint32_t)STR_WINDOW * STR_MIN_HITS;
        str_lookups = str_hits = 0;
    }
    uint64_t high;
    uint64_t h = str_hash(p, n, &high);
    if (high)  /* not ASCII: decoded, not cached */
        return PyUnicode_DecodeUTF8((const char *)p, n, "strict");
    if (str_cache == NULL) {
        void *block = PyMem_Calloc(STR_SLOTS + STR_WAYS, sizeof(str_slot));
        if (block == NULL)
            return PyErr_NoMemory();
        uintptr_t at = ((uintptr_t)block + 63) & ~(uintptr_t)63;
        str_cache = (str_slot *)at;
    }
    str_slot *bucket = str_cache + (h & (STR_SLOTS - 1) & ~(uint64_t)(STR_WAYS - 1));
    /* A free way if the bucket has one, else the one other bits of the hash name (no
     * per-bucket bookkeeping: a full bucket evicts a string picked by the newcomer). */
    str_slot *slot = bucket + ((h >> 60) & (STR_WAYS - 1));
    int free_found = 0;
    for (int j = 0; j < STR_WAYS; j++) {
        PyObject *s = bucket[j].str;
        if (s == NULL) {
            if (!free_found) {
                slot = bucket + j;
                free_found = 1;
            }
            continue;
        }
        if (bucket[j].hash == h && PyUnicode_GET_LENGTH(s) == n &&
            memcmp(PyUnicode_1BYTE_DATA(s), p, (size_t)n) == 0) {
            str_hits++;
            return Py_NewRef(s);
        }
    }
    PyObject *s = PyUnicode_New(n, 127);
    if (s == NULL)
        return NULL;
    memcpy(PyUnicode_1BYTE_DATA(s), p, (size_t)n);
    slot->hash = h;
    Py_XSETREF(slot->str, Py_NewRef(s));
    return s;
}

PyDoc_STRVAR(encode_strs_doc,
"encode_strs(col)\n--\n\n"
"(sizes, data) of a list of exact str, or None if col is not one (or a str has a lone\n"
"surrogate, which UTF-8 cannot hold).");

static PyObject *
encode_strs(PyObject *self, PyObject *col)
{
    if (!PyList_CheckExact(col))
        Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(col), nsizes = 0, ndata = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *s = PyList_GET_ITEM(col, i);
        if (!PyUnicode_CheckExact(s))
            Py_RETURN_NONE;
        Py_ssize_t len;
        if (PyUnicode_IS_COMPACT_ASCII(s))
            len = PyUnicode_GET_LENGTH(s);
        else if (PyUnicode_AsUTF8AndSize(s, &len) == NULL) {
            PyErr_Clear();  /* a lone surrogate: the column travels another way */
            Py_RETURN_NONE;
        }
        if (len > 0xFFFFFFFFLL)
            Py_RETURN_NONE;
        nsizes += len < STR_LONG ? 1 : 5;
        ndata += len;
    }
    PyObject *sizes = PyBytes_FromStringAndSize(NULL, nsizes);
    if (sizes == NULL)
        return NULL;
    PyObject *data = PyBytes_FromStringAndSize(NULL, ndata);
    if (data == NULL) {
        Py_DECREF(sizes);
        return NULL;
    }
    unsigned char *sz = (unsigned char *)PyBytes_AS_STRING(sizes);
    char *out = PyBytes_AS_STRING(data);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *s = PyList_GET_ITEM(col, i);
        Py_ssize_t len;
        const char *p;
        if (PyUnicode_IS_COMPACT_ASCII(s)) {
            len = PyUnicode_GET_LENGTH(s);
            p = (const char *)PyUnicode_1BYTE_DATA(s);
        }
        else
            p = PyUnicode_AsUTF8AndSize(s, &len);  /* cached by the first pass */
        if (len < STR_LONG)
            *sz++ = (unsigned char)len;
        else {
            uint32_t v = (uint32_t)len;
            *sz++ = STR_LONG;
            for (int b = 0; b < 4; b++)
                *sz++ = (unsigned char)(v >> (8 * b));
        }
        memcpy(out, p, (size_t)len);
        out += len;
    }
    PyObject *res = PyTuple_Pack(2, sizes, data);
    Py_DECREF(sizes);
    Py_DECREF(data);
    return res;
}

PyDoc_STRVAR(decode_strs_doc,
"decode_strs(sizes, data, cache=False)\n--\n\n"
"The list of str encode_strs made (ValueError if sizes and data do not fit together);\n"
"with cache, short ASCII strings made before are returned again (a column of keys).");

static PyObject *
decode_strs(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2 || nargs > 3 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "decode_strs(sizes: bytes, data: bytes, cache=False)");
        return NULL;
    }
    int cache = nargs == 3 ? PyObject_IsTrue(args[2]) : 0;
    if (cache < 0)
        return NULL;
    const unsigned char *sz = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    const unsigned char *end = sz + PyBytes_GET_SIZE(args[0]);
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    Py_ssize_t left = PyBytes_GET_SIZE(args[1]), n = 0;
    for (const unsigned char *q = sz; q < end; n++)
        q += *q == STR_LONG ? 5 : 1;
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len = *sz++;
        if (len == STR_LONG) {
            if (end - sz < 4)
                goto malformed;
            len = (Py_ssize_t)((uint32_t)sz[0] | (uint32_t)sz[1] << 8 | (uint32_t)sz[2] << 16 |
                               (uint32_t)sz[3] << 24);
            sz += 4;
        }
        if (len > left)
            goto malformed;
        PyObject *s = str_from(p, len, cache);
        if (s == NULL)
            goto fail;
        PyList_SET_ITEM(out, i, s);
        p += len;
        left -= len;
    }
    if (left == 0)
        return out;
malformed:
    PyErr_SetString(PyExc_ValueError, "decode_strs: the sizes do not match the data");
fail:
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef methods[] = {
    {"group", (PyCFunction)group, METH_O, group_doc},
    {"extract_slots", (PyCFunction)(void (*)(void))extract_slots, METH_FASTCALL,
     extract_slots_doc},
    {"extract_dict", (PyCFunction)(void (*)(void))extract_dict, METH_FASTCALL,
     extract_dict_doc},
    {"build_slots", (PyCFunction)(void (*)(void))build_slots, METH_FASTCALL, build_slots_doc},
    {"build_dict", (PyCFunction)(void (*)(void))build_dict, METH_FASTCALL, build_dict_doc},
    {"extract_map", (PyCFunction)(void (*)(void))extract_map, METH_FASTCALL, extract_map_doc},
    {"build_map", (PyCFunction)(void (*)(void))build_map, METH_FASTCALL, build_map_doc},
    {"atoms", (PyCFunction)atoms, METH_O, atoms_doc},
    {"same", (PyCFunction)(void (*)(void))same, METH_FASTCALL, same_doc},
    {"uniform", (PyCFunction)uniform, METH_O, uniform_doc},
    {"interleave", (PyCFunction)(void (*)(void))interleave, METH_FASTCALL, interleave_doc},
    {"encode_strs", (PyCFunction)encode_strs, METH_O, encode_strs_doc},
    {"decode_strs", (PyCFunction)(void (*)(void))decode_strs, METH_FASTCALL, decode_strs_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "malstrom.engine._cpack",
    .m_doc = "Packing record columns in C (the rules and fallback: malstrom.engine.packing).",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__cpack(void)
{
    if (empty_tuple == NULL) {
        empty_tuple = PyTuple_New(0);
        if (empty_tuple == NULL)
            return NULL;
    }
    return PyModuleDef_Init(&module);
}
