#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "lmblocks/error.h"
#include "lmblocks/ops.h"
#include "lmblocks/runtime.h"
#include "lmblocks/tensor.h"

namespace lb::py_bind {
namespace py = pybind11;

void register_errors(py::module_& m);
void bind_tensor(py::module_& m);
void bind_runtime(py::module_& m);
void bind_ops(py::module_ m);
void bind_bench(py::module_ m);
void bind_quant(py::module_ m);
void bind_blocks(py::module_ m);
void bind_moe(py::module_ m);  // into the same "nn" module, after bind_blocks
void bind_text(py::module_ m);
void bind_sampling(py::module_ m);

// A Tensor from a Tensor, a NumPy array, or anything np.asarray accepts (zero-copy for arrays of a
// supported dtype). `arg` names the argument in error messages.
Tensor to_tensor(py::handle obj, const char* op, const char* arg);
// An optional argument: None gives an undefined Tensor.
Tensor to_tensor_opt(py::handle obj, const char* op, const char* arg);
// The NumPy view of a tensor (no copy); the array keeps the tensor's memory alive through `base`
// (the Tensor's Python object) or, when none is given, through a capsule holding its owner.
py::array to_numpy(const Tensor& t, py::handle base = {});
// Results come back as the kind of the first input: Tensor in, Tensor out; otherwise NumPy.
py::object wrap_result(const Tensor& t, py::handle like, py::handle out_arg);

}  // namespace lb::py_bind
