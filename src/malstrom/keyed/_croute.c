/* malstrom.keyed._croute: the distributor's router, in one pass over a batch.
 *
 * The pure-Python router (malstrom/keyed/_route.py, which also documents the contract) builds
 * an owner list, a byte mask per destination and three itertools.compress passes per
 * destination. Here each route key is looked up once in the owner cache, its destination
 * index remembered, and the columns are then copied into lists sized exactly per
 * destination. No user code runs after the lookups, so the copy needs no re-checks.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Destination indexes fit in 16 bits (a worker set of 65,536 workers is far off); wider
 * sets are refused so that the index array stays small and cache-friendly. */
#define MAX_DESTS 65535

static int
column(PyObject *obj, const char *name, PyObject **out, Py_ssize_t n)
{
    PyObject *fast = PySequence_Fast(obj, name);
    if (fast == NULL)
        return -1;
    if (PySequence_Fast_GET_SIZE(fast) != n) {
        PyErr_Format(PyExc_ValueError, "split: %s has %zd items, values %zd", name,
                     PySequence_Fast_GET_SIZE(fast), n);
        Py_DECREF(fast);
        return -1;
    }
    *out = fast;
    return 0;
}

/* Index in dest_objs/dest_vals of the owner ``o``; -1 when it is none of them. */
static Py_ssize_t
dest_index(PyObject *o, PyObject *const *dest_objs, const long *dest_vals, Py_ssize_t d)
{
    /* The cache's values are usually the very objects in ``workers`` (small ints are shared),
     * so identity settles almost every lookup. */
    for (Py_ssize_t j = 0; j < d; j++) {
        if (dest_objs[j] == o)
            return j;
    }
    if (PyLong_Check(o)) {
        int overflow = 0;
        long v = PyLong_AsLongAndOverflow(o, &overflow);  /* cannot fail on an int */
        if (!overflow) {
            for (Py_ssize_t j = 0; j < d; j++) {
                if (dest_vals[j] == v)
                    return j;
            }
        }
        PyErr_Clear();
    }
    return -1;
}

PyDoc_STRVAR(split_doc,
"split(route, keys, values, timestamps, cache, workers)\n--\n\n"
"Split a batch's columns by the owner of each route key (see malstrom.keyed._route).");

static PyObject *
split(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError, "split() takes 6 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *cache = args[4];
    if (!PyDict_Check(cache)) {
        PyErr_SetString(PyExc_TypeError, "split: cache must be a dict");
        return NULL;
    }
    PyObject *route = NULL, *cols[3] = {NULL, NULL, NULL}, *workers = NULL;
    PyObject *result = NULL;
    uint16_t *idx = NULL;
    Py_ssize_t *counts = NULL;
    long *dest_vals = NULL;
    PyObject *const *dest_objs;
    PyObject *stray = NULL;  /* the first owner that is no destination */
    Py_ssize_t d;

    PyObject *values = PySequence_Fast(args[2], "split: values must be a sequence");
    if (values == NULL)
        return NULL;
    cols[1] = values;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(values);
    if (column(args[0], "route", &route, n) < 0 || column(args[1], "keys", &cols[0], n) < 0
        || column(args[3], "timestamps", &cols[2], n) < 0)
        goto done;

    /* A tuple (the same one when it is one already): a key's __eq__ cannot resize it. */
    workers = PySequence_Tuple(args[5]);
    if (workers == NULL)
        goto done;
    d = PyTuple_GET_SIZE(workers);
    if (d == 0 || d > MAX_DESTS) {
        PyErr_Format(PyExc_ValueError, "split: %zd destinations (1 to %d)", d, MAX_DESTS);
        goto done;
    }
    dest_objs = &PyTuple_GET_ITEM(workers, 0);
    dest_vals = PyMem_Malloc(d * sizeof(long));
    counts = PyMem_Calloc(d, sizeof(Py_ssize_t));
    idx = PyMem_Malloc((n ? n : 1) * sizeof(uint16_t));
    if (dest_vals == NULL || counts == NULL || idx == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j < d; j++) {
        dest_vals[j] = PyLong_AsLong(dest_objs[j]);
        if (dest_vals[j] == -1 && PyErr_Occurred())
            goto done;
    }

    /* Pass 1: the destination of every record. A key's __hash__/__eq__ may run Python code,
     * so the route list is re-read each turn and the key held while it is looked up. */
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i >= PySequence_Fast_GET_SIZE(route)) {
            PyErr_SetString(PyExc_RuntimeError, "split: route changed size during the split");
            goto done;
        }
        PyObject *key = PySequence_Fast_GET_ITEM(route, i);
        Py_INCREF(key);
        PyObject *owner = PyDict_GetItemWithError(cache, key);  /* borrowed */
        if (owner == NULL) {
            Py_DECREF(key);
            if (PyErr_Occurred())
                goto done;  /* unhashable key: TypeError, or a failing __eq__ */
            result = Py_None;  /* a miss: the caller fills the cache and calls again */
            Py_INCREF(result);
            goto done;
        }
        /* owner is used before the key is let go: freeing a key could run a __del__. */
        Py_ssize_t j = dest_index(owner, dest_objs, dest_vals, d);
        if (j < 0 && stray == NULL) {
            /* Reported after the lookups, so a later miss still answers None (as in Python,
             * which looks every key up before it counts owners). */
            stray = owner;
            Py_INCREF(stray);
        }
        Py_DECREF(key);
        if (j < 0)
            continue;
        idx[i] = (uint16_t)j;
        counts[j]++;
    }
    if (stray != NULL) {
        PyErr_Format(PyExc_ValueError, "split: owner %R is not one of the destinations", stray);
        goto done;
    }
    /* The lookups ran Python code (__hash__, __eq__) that might have resized a column. */
    for (int c = 0; c < 3; c++) {
        if (PySequence_Fast_GET_SIZE(cols[c]) != n) {
            PyErr_SetString(PyExc_RuntimeError, "split: a column changed size during the split");
            goto done;
        }
    }
    if (n == 0) {
        result = PyList_New(0);
        goto done;
    }
    /* Every record to one worker: the caller passes the batch on as it is. */
    for (Py_ssize_t j = 0; j < d; j++) {
        if (counts[j] == n) {
            result = dest_objs[j];
            Py_INCREF(result);
            goto done;
        }
    }

    /* Pass 2: copy the columns into exactly sized lists, in record order. */
    Py_ssize_t used = 0;
    for (Py_ssize_t j = 0; j < d; j++)
        used += counts[j] > 0;
    result = PyList_New(used);
    if (result == NULL)
        goto done;
    /* parts[j]: destination j's three columns (NULL when it gets nothing). */
    PyObject **parts = PyMem_Calloc(3 * d, sizeof(PyObject *));
    Py_ssize_t *fill = PyMem_Calloc(d, sizeof(Py_ssize_t));
    if (parts == NULL || fill == NULL) {
        PyMem_Free(parts);
        PyMem_Free(fill);
        Py_CLEAR(result);
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t slot = 0;
    for (Py_ssize_t j = 0; j < d && result != NULL; j++) {
        if (!counts[j])
            continue;
        PyObject *k = PyList_New(counts[j]);
        PyObject *v = PyList_New(counts[j]);
        PyObject *t = PyList_New(counts[j]);
        PyObject *part = (k && v && t) ? PyTuple_Pack(4, dest_objs[j], k, v, t) : NULL;
        if (part == NULL) {
            Py_XDECREF(k);
            Py_XDECREF(v);
            Py_XDECREF(t);
            Py_CLEAR(result);  /* frees the parts already in it */
            break;
        }
        /* The tuple holds the lists; parts[] borrows them (alive as long as result is). */
        parts[3 * j] = k;
        parts[3 * j + 1] = v;
        parts[3 * j + 2] = t;
        Py_DECREF(k);
        Py_DECREF(v);
        Py_DECREF(t);
        PyList_SET_ITEM(result, slot++, part);
    }
    if (result != NULL) {
        /* New lists of NULLs, filled before anyone sees them; the columns cannot change
         * here (no Python code runs in this loop). */
        PyObject **ks = PySequence_Fast_ITEMS(cols[0]);
        PyObject **vs = PySequence_Fast_ITEMS(cols[1]);
        PyObject **ts = PySequence_Fast_ITEMS(cols[2]);
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t j = idx[i];
            Py_ssize_t at = fill[j]++;
            PyObject **p = parts + 3 * j;
            Py_INCREF(ks[i]);
            PyList_SET_ITEM(p[0], at, ks[i]);
            Py_INCREF(vs[i]);
            PyList_SET_ITEM(p[1], at, vs[i]);
            Py_INCREF(ts[i]);
            PyList_SET_ITEM(p[2], at, ts[i]);
        }
    }
    PyMem_Free(parts);
    PyMem_Free(fill);

done:
    Py_XDECREF(stray);
    PyMem_Free(idx);
    PyMem_Free(counts);
    PyMem_Free(dest_vals);
    Py_XDECREF(workers);
    Py_XDECREF(route);
    Py_XDECREF(cols[0]);
    Py_XDECREF(cols[1]);
    Py_XDECREF(cols[2]);
    return result;
}

static PyMethodDef methods[] = {
    {"split", (PyCFunction)(void (*)(void))split, METH_FASTCALL, split_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "malstrom.keyed._croute",
    .m_doc = "The distributor's router in C (the fallback: malstrom.keyed._route).",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__croute(void)
{
    return PyModuleDef_Init(&module);
}
