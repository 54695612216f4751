// lb.Tensor and its NumPy / DLPack interop. Memory is shared both ways, never copied, and stays
// valid while either side holds it: a Tensor made from an ndarray owns a reference to the array;
// an ndarray made from a Tensor has the Tensor as its base.
#include <Python.h>

#include <array>
#include <cstring>

#include <pybind11/stl/filesystem.h>

#include "bindings.h"
#include "dlpack.h"

namespace lb::py_bind {
namespace {

// Holds a Python object for a C++ owner; drops it under the GIL from whatever thread runs last.
struct PyOwner {
  py::object obj;
  ~PyOwner() {
    if (!Py_IsInitialized()) {
      obj.release();  // interpreter gone: leak rather than touch it
      return;
    }
    py::gil_scoped_acquire gil;
    obj = py::object();
  }
};

std::shared_ptr<void> keep_alive(py::object obj) {
  auto* o = new PyOwner{std::move(obj)};
  return std::shared_ptr<void>(o, [](void* p) { delete static_cast<PyOwner*>(p); });
}

// Python objects cached in statics are leaked on purpose: a static py::object would be destroyed
// after the interpreter has finalized (at process exit) and crash there.
py::object numpy() {
  static py::object* np = new py::object(py::module_::import("numpy"));
  return *np;
}

// ml_dtypes.bfloat16 when installed, else None (bf16 then shows up as uint16).
py::object bfloat16_dtype() {
  static py::object* dt = new py::object([] {
    try {
      return py::object(numpy().attr("dtype")(py::module_::import("ml_dtypes").attr("bfloat16")));
    } catch (py::error_already_set&) {
      return py::object(py::none());
    }
  }());
  return *dt;
}

py::dtype make_numpy_dtype(DType t) {
  switch (t) {
    case DType::f32: return py::dtype("float32");
    case DType::f16: return py::dtype("float16");
    case DType::f64: return py::dtype("float64");
    case DType::bf16: {
      py::object bf = bfloat16_dtype();
      return bf.is_none() ? py::dtype("uint16") : py::reinterpret_borrow<py::dtype>(bf);
    }
    case DType::i8: return py::dtype("int8");
    case DType::u8: return py::dtype("uint8");
    case DType::i16: return py::dtype("int16");
    case DType::i32: return py::dtype("int32");
    case DType::i64: return py::dtype("int64");
    default: return py::dtype("uint8");  // quantized blocks: raw bytes
  }
}

// Parsing a dtype from its name costs ~0.5 us, so each is made once (and leaked, as above).
const py::dtype& numpy_dtype(DType t) {
  static std::array<py::dtype*, size_t(DType::count_)> cache{};
  py::dtype*& slot = cache[size_t(t)];
  if (!slot) slot = new py::dtype(make_numpy_dtype(t));
  return *slot;
}

DType dtype_of_numpy(const py::dtype& dt, const char* op, const char* arg) {
  const char kind = dt.kind();
  const auto size = dt.itemsize();
  if (dt.byteorder() == '>') throw TypeError(std::string(op) + ": " + arg + " is big-endian; convert it to native byte order");
  if (kind == 'f' && size == 4) return DType::f32;
  if (kind == 'f' && size == 2) return DType::f16;
  if (kind == 'f' && size == 8) return DType::f64;
  if (kind == 'i' && size == 1) return DType::i8;
  if (kind == 'i' && size == 2) return DType::i16;
  if (kind == 'i' && size == 4) return DType::i32;
  if (kind == 'i' && size == 8) return DType::i64;
  if (kind == 'u' && size == 1) return DType::u8;
  const std::string nm = py::str(dt.attr("name"));  // ml_dtypes' types are known by name only
  if (nm == "bfloat16" && size == 2) return DType::bf16;
  throw TypeError(std::string(op) + ": " + arg + " has unsupported dtype " + nm);
}

Tensor from_numpy(py::array arr, const char* op, const char* arg) {
  const DType dt = dtype_of_numpy(arr.dtype(), op, arg);
  const int64_t item = traits(dt).type_size;
  if (arr.ndim() > kMaxDims) throw ValueError(std::string(op) + ": " + arg + " has more than 8 dimensions");
  bool aligned = reinterpret_cast<uintptr_t>(arr.data()) % uintptr_t(item) == 0;
  for (py::ssize_t i = 0; i < arr.ndim(); ++i) aligned = aligned && arr.strides(i) % item == 0;
  if (!aligned) arr = py::reinterpret_steal<py::array>(numpy().attr("ascontiguousarray")(arr).release());
  Shape shape(arr.shape(), arr.shape() + arr.ndim());
  Shape strides(arr.strides(), arr.strides() + arr.ndim());
  const bool readonly = !arr.writeable();
  void* data = const_cast<void*>(arr.data());
  return Tensor(keep_alive(arr), data, dt, std::move(shape), std::move(strides), readonly);
}

Shape shape_arg(const py::tuple& args) {
  // Accepts f(2, 3) and f((2, 3)).
  py::sequence seq = args;
  if (args.size() == 1 && py::isinstance<py::sequence>(args[0])) seq = args[0];
  Shape s;
  for (auto v : seq) s.push_back(v.cast<int64_t>());
  return s;
}

DType dtype_arg(py::handle d) {
  if (py::isinstance<py::str>(d)) return dtype_from_name(d.cast<std::string>());
  return dtype_of_numpy(py::reinterpret_steal<py::dtype>(numpy().attr("dtype")(d).release()), "dtype", "dtype");
}

py::tuple to_tuple(const Shape& s) {
  py::tuple t(s.size());
  for (size_t i = 0; i < s.size(); ++i) t[i] = s[i];
  return t;
}

Tensor getitem(const Tensor& t, py::handle key_in) {
  py::tuple key = py::isinstance<py::tuple>(key_in) ? py::reinterpret_borrow<py::tuple>(key_in) : py::make_tuple(key_in);
  int consumed = 0;
  for (auto k : key)
    if (!k.is_none() && !k.is(py::ellipsis())) ++consumed;
  if (consumed > t.ndim())
    throw IndexError("too many indices: " + std::to_string(consumed) + " for a tensor of " + std::to_string(t.ndim()) +
                     " dimensions");
  Tensor r = t;
  int axis = 0;
  bool seen_ellipsis = false;
  for (auto k : key) {
    if (k.is(py::ellipsis())) {
      if (seen_ellipsis) throw IndexError("an index can only have a single ellipsis");
      seen_ellipsis = true;
      axis += t.ndim() - consumed;
    } else if (k.is_none()) {
      r = r.unsqueeze(axis++);
    } else if (py::isinstance<py::slice>(k)) {
      Py_ssize_t start, stop, step;
      if (PySlice_Unpack(k.ptr(), &start, &stop, &step) < 0) throw py::error_already_set();
      r = r.slice(axis++, start, stop, step);
    } else if (PyIndex_Check(k.ptr())) {
      r = r.select(axis, py::cast<int64_t>(py::reinterpret_borrow<py::object>(PyNumber_Index(k.ptr()))));
    } else {
      throw TypeError("Tensor indices must be integers, slices, None or ...; for fancy indexing use np.asarray(t)[...]");
    }
  }
  return r;
}

// ---- DLPack ----------------------------------------------------------------------------------
struct DLContext {
  std::shared_ptr<void> owner;
  Shape shape, strides;
};

dlpack::DLTensor fill_dl(const Tensor& t, DLContext* ctx) {
  if (is_quantized(t.dtype())) throw TypeError(std::string("__dlpack__: ") + name(t.dtype()) + " blocks have no DLPack type");
  dlpack::DataType dt{};
  dt.bits = uint8_t(8 * t.itemsize());
  dt.lanes = 1;
  switch (t.dtype()) {
    case DType::f32: case DType::f16: case DType::f64: dt.code = dlpack::kDLFloat; break;
    case DType::bf16: dt.code = dlpack::kDLBfloat; break;
    case DType::u8: dt.code = dlpack::kDLUInt; break;
    default: dt.code = dlpack::kDLInt; break;
  }
  ctx->owner = t.owner();
  ctx->shape = t.shape();
  for (int64_t s : t.strides()) ctx->strides.push_back(s / t.itemsize());
  return dlpack::DLTensor{t.raw(), {dlpack::kDLCPU, 0}, t.ndim(), dt, ctx->shape.data(), ctx->strides.data(), 0};
}

// One capsule per export; the consumer renames it to "used_..." when it takes ownership, so only
// an unconsumed capsule still frees the tensor. M is the legacy or the versioned managed struct.
template <class M>
constexpr const char* kCapsuleName = "dltensor";
template <>
constexpr const char* kCapsuleName<dlpack::ManagedTensorVersioned> = "dltensor_versioned";

template <class M>
py::capsule dlpack_capsule(const Tensor& t) {
  auto ctx = std::make_unique<DLContext>();
  auto m = std::make_unique<M>();
  m->dl_tensor = fill_dl(t, ctx.get());
  if constexpr (std::is_same_v<M, dlpack::ManagedTensorVersioned>) {
    m->version = {1, 0};
    m->flags = t.readonly() ? dlpack::kFlagReadOnly : 0;
  }
  m->manager_ctx = ctx.release();
  m->deleter = [](M* self) {
    delete static_cast<DLContext*>(self->manager_ctx);
    delete self;
  };
  return py::capsule(m.release(), kCapsuleName<M>, [](PyObject* cap) {
    if (PyCapsule_IsValid(cap, kCapsuleName<M>)) {
      auto* mt = static_cast<M*>(PyCapsule_GetPointer(cap, kCapsuleName<M>));
      if (mt && mt->deleter) mt->deleter(mt);
    }
  });
}

}  // namespace

Tensor to_tensor(py::handle obj, const char* op, const char* arg) {
  if (obj.is_none()) throw TypeError(std::string(op) + ": " + arg + " is required, got None");
  if (py::isinstance<Tensor>(obj)) return obj.cast<Tensor>();
  py::object arr = py::isinstance<py::array>(obj) ? py::reinterpret_borrow<py::object>(obj) : numpy().attr("asarray")(obj);
  return from_numpy(py::reinterpret_borrow<py::array>(arr), op, arg);
}

Tensor to_tensor_opt(py::handle obj, const char* op, const char* arg) {
  return obj.is_none() ? Tensor() : to_tensor(obj, op, arg);
}

py::array to_numpy(const Tensor& t, py::handle base_obj) {
  Shape shape = t.shape(), strides = t.strides();
  if (is_quantized(t.dtype())) {  // expose the blocks as bytes: (..., row_bytes)
    shape.back() = row_bytes(t.dtype(), shape.back());
    strides.back() = 1;
  }
  // The array's base keeps the memory alive: the Tensor object when there is one, else a capsule
  // holding the owner (cheaper than making a Python Tensor just to be a base).
  py::object base = base_obj ? py::reinterpret_borrow<py::object>(base_obj)
                             : py::capsule(new std::shared_ptr<void>(t.owner()),
                                           [](void* p) { delete static_cast<std::shared_ptr<void>*>(p); });
  py::array arr(numpy_dtype(t.dtype()), std::vector<py::ssize_t>(shape.begin(), shape.end()),
                std::vector<py::ssize_t>(strides.begin(), strides.end()), t.raw(), base);
  if (t.readonly()) arr.attr("setflags")(py::arg("write") = false);
  return arr;
}

py::object wrap_result(const Tensor& t, py::handle like, py::handle out_arg) {
  if (!out_arg.is_none()) return py::reinterpret_borrow<py::object>(out_arg);
  if (py::isinstance<Tensor>(like)) return py::cast(t);
  return to_numpy(t);
}

void bind_tensor(py::module_& m) {
  py::class_<Tensor>(m, "Tensor", R"doc(
A typed, strided view of memory: the native array type of lmblocks.

dtype is one of f32, f16, bf16, i8, u8, i16, i32, i64, f64, or a ggml block type (q4_0, q8_0,
q4_k, ...). Strides are in bytes. Views (indexing, transpose, permute, view, reshape when the
strides allow) share memory; contiguous(), clone() and astype() copy.

NumPy interop is zero-copy both ways: ``lb.asarray(ndarray)`` wraps the array and
``np.asarray(tensor)`` views the tensor; the memory stays valid while either side holds it.
bf16 tensors appear in NumPy as ``ml_dtypes.bfloat16`` when ml_dtypes is installed
(``pip install lmblocks[bf16]``), otherwise as a uint16 view of the same bits. Quantized tensors
appear as their raw bytes (uint8, last axis = bytes per row). ``__dlpack__`` exports to any DLPack
consumer (NumPy, PyTorch, JAX); read-only tensors (memory-mapped files) carry the read-only flag.

>>> import numpy as np, lmblocks as lb
>>> a = np.arange(6, dtype=np.float32).reshape(2, 3)
>>> t = lb.asarray(a)
>>> t.shape, t.dtype, np.shares_memory(np.asarray(t), a)
((2, 3), 'f32', True)
>>> np.asarray(t.T[1:])
array([[1., 4.],
       [2., 5.]], dtype=float32)
)doc")
      .def_property_readonly("dtype", [](const Tensor& t) { return std::string(name(t.dtype())); })
      .def_property_readonly("shape", [](const Tensor& t) { return to_tuple(t.shape()); })
      .def_property_readonly("strides", [](const Tensor& t) { return to_tuple(t.strides()); }, "Strides in bytes.")
      .def_property_readonly("ndim", &Tensor::ndim)
      .def_property_readonly("size", &Tensor::numel, "Number of elements.")
      .def_property_readonly("nbytes", &Tensor::nbytes)
      .def_property_readonly("itemsize", &Tensor::itemsize, "Bytes per element (0 for block-quantized types).")
      .def_property_readonly("is_contiguous", &Tensor::is_contiguous)
      .def_property_readonly("readonly", &Tensor::readonly)
      .def_property_readonly("data_ptr", [](const Tensor& t) { return reinterpret_cast<uintptr_t>(t.raw()); })
      .def_property_readonly("T", [](const Tensor& t) {
        std::vector<int> axes(t.ndim());
        for (int i = 0; i < t.ndim(); ++i) axes[i] = t.ndim() - 1 - i;
        return t.permute(axes);
      }, "All axes reversed (NumPy's .T).")
      .def("__len__", [](const Tensor& t) {
        if (t.ndim() == 0) throw TypeError("len() of a 0-d tensor");
        return t.dim(0);
      })
      .def("__getitem__", &getitem)
      .def("transpose", [](const Tensor& t, py::args axes) {
        if (axes.size() == 0) {
          std::vector<int> rev(t.ndim());
          for (int i = 0; i < t.ndim(); ++i) rev[i] = t.ndim() - 1 - i;
          return t.permute(rev);
        }
        Shape s = shape_arg(axes);
        return t.permute(std::vector<int>(s.begin(), s.end()));
      }, "As NumPy: transpose() reverses the axes, transpose(*axes) permutes them (a view).")
      .def("swapaxes", &Tensor::transpose, py::arg("a"), py::arg("b"), "A view with two axes swapped.")
      .def("permute", [](const Tensor& t, py::args axes) {
        Shape s = shape_arg(axes);
        return t.permute(std::vector<int>(s.begin(), s.end()));
      }, "A view with the axes in the given order.")
      .def("unsqueeze", &Tensor::unsqueeze, py::arg("axis"))
      .def("view", [](const Tensor& t, py::args shape) { return t.view(shape_arg(shape)); },
           "A view with another shape; raises ValueError when the strides cannot express it.")
      .def("reshape", [](const Tensor& t, py::args shape) { return t.reshape(shape_arg(shape)); },
           "A view when the strides allow, else a contiguous copy (like NumPy / PyTorch).")
      .def("contiguous", &Tensor::contiguous, "Itself if contiguous, else a contiguous copy.")
      .def("clone", &Tensor::clone, "A contiguous copy.")
      .def("copy", &Tensor::clone, "A contiguous copy.")
      .def("astype", [](const Tensor& t, py::handle d) { return t.to(dtype_arg(d)).contiguous(); },
           py::arg("dtype"), "A converted copy (plain types; use lb.dequantize for quantized ones).")
      .def("numpy", [](py::object self) { return to_numpy(self.cast<const Tensor&>(), self); }, "The NumPy view (no copy).")
      .def("__array__", [](py::object self, py::object dtype, py::object copy) -> py::object {
        py::array a = to_numpy(self.cast<const Tensor&>(), self);
        if (!dtype.is_none()) return a.attr("astype")(dtype, py::arg("copy") = !copy.is_none() && copy.cast<bool>());
        if (!copy.is_none() && copy.cast<bool>()) return a.attr("copy")();
        return a;
      }, py::arg("dtype") = py::none(), py::arg("copy") = py::none())
      .def("__dlpack__", [](const Tensor& t, py::object stream, py::object max_version, py::object dl_device,
                            py::object copy) -> py::object {
        (void)stream;
        if (!dl_device.is_none()) {
          auto dev = dl_device.cast<std::pair<int, int>>();
          if (dev.first != dlpack::kDLCPU) throw py::buffer_error("__dlpack__: only the CPU device is available");
        }
        const bool force_copy = !copy.is_none() && copy.cast<bool>();
        const Tensor src = force_copy ? t.clone() : t;
        if (!max_version.is_none() && max_version.cast<py::tuple>()[0].cast<int>() >= 1) return dlpack_capsule<dlpack::ManagedTensorVersioned>(src);
        // Legacy consumers cannot see a read-only flag: hand them a private copy of read-only memory.
        return dlpack_capsule<dlpack::ManagedTensor>(src.readonly() ? src.clone() : src);
      }, py::kw_only(), py::arg("stream") = py::none(), py::arg("max_version") = py::none(),
         py::arg("dl_device") = py::none(), py::arg("copy") = py::none())
      .def("__dlpack_device__", [](const Tensor&) { return py::make_tuple(int(dlpack::kDLCPU), 0); })
      .def("__repr__", &Tensor::repr);

  m.def("asarray", [](py::object obj, py::object dtype) {
    Tensor t = to_tensor(obj, "asarray", "obj");
    if (!dtype.is_none()) t = t.to(dtype_arg(dtype));
    return t;
  }, py::arg("obj"), py::arg("dtype") = py::none(), R"doc(
A Tensor sharing memory with ``obj`` (a NumPy array, a Tensor, or anything ``np.asarray`` takes).
With ``dtype``, a converted copy instead.

>>> import numpy as np, lmblocks as lb
>>> a = np.zeros(4, np.float32); t = lb.asarray(a); a[1] = 7
>>> float(np.asarray(t)[1])
7.0
)doc");
  m.def("empty", [](py::args shape, py::object dtype) { return Tensor::empty(shape_arg(shape), dtype_arg(dtype)); },
        py::kw_only(), py::arg("dtype") = "f32", "An uninitialized, 64-byte aligned tensor.");
  m.def("zeros", [](py::args shape, py::object dtype) { return Tensor::zeros(shape_arg(shape), dtype_arg(dtype)); },
        py::kw_only(), py::arg("dtype") = "f32", "A zero-filled, 64-byte aligned tensor.");
  m.def("dtype_info", [](py::handle d) {
    const DTypeTraits& tr = traits(dtype_arg(d));
    py::dict r;
    r["name"] = tr.name;
    r["block_size"] = tr.block_size;
    r["type_size"] = tr.type_size;
    r["quantized"] = tr.quantized;
    r["ggml_type"] = tr.ggml_type;
    return r;
  }, py::arg("dtype"), "Block size, bytes per block and ggml id of a dtype: lb.dtype_info('q4_0').");
  m.def("dtypes", [] {
    std::vector<std::string> v;
    for (DType d : all_dtypes()) v.push_back(name(d));
    return v;
  }, "The names of every dtype, plain and quantized.");

  py::class_<MappedFile, std::shared_ptr<MappedFile>>(m, "MappedFile", R"doc(
A read-only memory map of a file. ``tensor(offset, shape, dtype)`` views a region without copying,
after checking it lies inside the file. The map lives while any tensor viewed from it does.
)doc")
      .def(py::init([](const std::filesystem::path& path) { return MappedFile::open(path.string()); }), py::arg("path"))
      .def_property_readonly("path", &MappedFile::path)
      .def_property_readonly("size", &MappedFile::size)
      .def("tensor", [](const MappedFile& f, int64_t offset, py::object shape, py::handle dtype) {
        return f.tensor(offset, shape_arg(py::make_tuple(shape)), dtype_arg(dtype));
      }, py::arg("offset"), py::arg("shape"), py::arg("dtype"))
      .def("__repr__", [](const MappedFile& f) {
        return "MappedFile('" + f.path() + "', " + std::to_string(f.size()) + " bytes)";
      });
}

}  // namespace lb::py_bind
