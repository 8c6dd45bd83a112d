/* BUILD PLACEHOLDER: proves the extension builds and loads; the real kernel replaces it. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static int loop_exec(PyObject *module) {
    return PyModule_AddIntConstant(module, "VERSION", 1);
}

static PyModuleDef_Slot loop_slots[] = {
    {Py_mod_exec, loop_exec},
    {0, NULL},
};

static struct PyModuleDef loop_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "llmservingsim.native._loop",
    .m_doc = "The compiled event loop (build placeholder).",
    .m_size = 0,
    .m_slots = loop_slots,
};

PyMODINIT_FUNC PyInit__loop(void) {
    return PyModuleDef_Init(&loop_module);
}
