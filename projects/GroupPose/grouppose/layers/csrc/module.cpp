// Python entry point of grouppose._C. The module itself is empty: importing it loads the
// shared library, whose static TORCH_LIBRARY registrars define torch.ops.grouppose.*.
#include <Python.h>

static PyModuleDef grouppose_c_module = {
    PyModuleDef_HEAD_INIT,
    "grouppose._C",
    "Compiled ops of GroupPose (torch.ops.grouppose), registered on import.",
    -1,
    nullptr,
};

PyMODINIT_FUNC PyInit__C() {
  return PyModule_Create(&grouppose_c_module);
}
