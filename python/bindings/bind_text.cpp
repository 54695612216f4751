// lb._core.text: StringTable and the tokenizers' merge loops. Python strings cross as UTF-8 with
// surrogateescape, so raw byte tokens (not valid UTF-8) round-trip losslessly.
#include "bindings.h"
#include "lmblocks/text.h"

namespace lb::py_bind {

namespace {

using text::StringTable;

// The UTF-8 bytes of a str (surrogateescape) or the bytes of a bytes-like object.
std::string utf8(py::handle o, const char* what) {
  if (PyUnicode_Check(o.ptr())) {
    Py_ssize_t n;
    if (const char* p = PyUnicode_AsUTF8AndSize(o.ptr(), &n)) return {p, size_t(n)};
    PyErr_Clear();  // lone surrogates: encode them back to the bytes they escaped
    return py::reinterpret_steal<py::bytes>(PyUnicode_AsEncodedString(o.ptr(), "utf-8", "surrogateescape"));
  }
  if (PyBytes_Check(o.ptr())) return py::reinterpret_borrow<py::bytes>(o);
  throw TypeError(std::string(what) + ": expected str or bytes, got " +
                  std::string(py::str(py::type::handle_of(o).attr("__name__"))));
}

py::str to_str(std::string_view s) {
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), Py_ssize_t(s.size()), "surrogateescape");
  if (!o) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(o);
}

size_t checked_index(const StringTable& t, int64_t i) {
  const auto n = int64_t(t.size());
  if (i < -n || i >= n)
    throw IndexError("StringTable index " + std::to_string(i) + " out of range for " + std::to_string(n) + " strings");
  return size_t(i < 0 ? i + n : i);
}

}  // namespace

void bind_text(py::module_ m) {
  py::class_<StringTable>(m, "StringTable",
                          "An immutable list of strings in one buffer, with a hash index (see lmblocks.StringTable).")
      .def(py::init([](py::iterable items) {
             auto t = std::make_unique<StringTable>();
             for (py::handle o : items) t->push_back(utf8(o, "StringTable"));
             return t;
           }),
           py::arg("items"))
      .def_static(
          "from_gguf",
          [](py::buffer buf, size_t pos, uint64_t count) {
            const py::buffer_info info = buf.request();
            size_t end = 0;
            auto t = StringTable::from_gguf(static_cast<const std::byte*>(info.ptr), size_t(info.size * info.itemsize),
                                            pos, count, end);
            return py::make_tuple(py::cast(std::move(t)), end);
          },
          py::arg("buffer"), py::arg("pos"), py::arg("count"),
          "Read `count` GGUF strings (u64 length + bytes) at buffer[pos:] -> (table, end position).")
      .def("__len__", &StringTable::size)
      .def("__getitem__", [](const StringTable& t, int64_t i) { return to_str(t[checked_index(t, i)]); })
      .def("__getitem__",
           [](const StringTable& t, py::slice s) {
             size_t start, stop, step, n;
             if (!s.compute(t.size(), &start, &stop, &step, &n)) throw py::error_already_set();
             py::list out(n);
             for (size_t k = 0; k < n; ++k) out[k] = to_str(t[start + k * step]);
             return out;
           })
      .def(
          "raw", [](const StringTable& t, int64_t i) {
            const std::string_view s = t[checked_index(t, i)];
            return py::bytes(s.data(), s.size());
          },
          py::arg("i"), "String i as bytes.")
      .def(
          "find", [](const StringTable& t, py::handle s) { return t.find(utf8(s, "StringTable.find")); }, py::arg("s"),
          "The first index of s, or -1.")
      .def("__contains__", [](const StringTable& t, py::handle s) {
        return (PyUnicode_Check(s.ptr()) || PyBytes_Check(s.ptr())) && t.find(utf8(s, "in")) >= 0;
      })
      .def("lengths",
           [](const StringTable& t) {
             py::array_t<int64_t> out(py::ssize_t(t.size()));
             auto* p = out.mutable_data();
             for (size_t i = 0; i < t.size(); ++i) p[i] = int64_t(t[i].size());
             return out;
           },
           "Byte lengths of the strings, as an int64 array.")
      .def("__eq__",
           [](const StringTable& t, py::handle other) -> py::object {
             if (py::isinstance<StringTable>(other)) {
               const auto& o = other.cast<const StringTable&>();
               if (o.size() != t.size()) return py::bool_(false);
               for (size_t i = 0; i < t.size(); ++i)
                 if (o[i] != t[i]) return py::bool_(false);
               return py::bool_(true);
             }
             if (!PySequence_Check(other.ptr()) || PyUnicode_Check(other.ptr()) || PyBytes_Check(other.ptr()))
               return py::reinterpret_borrow<py::object>(Py_NotImplemented);
             const auto seq = py::reinterpret_borrow<py::sequence>(other);
             if (seq.size() != t.size()) return py::bool_(false);
             for (size_t i = 0; i < t.size(); ++i)
               if (!to_str(t[i]).equal(seq[i])) return py::bool_(false);
             return py::bool_(true);
           })
      .def("__repr__",
           [](const StringTable& t) {
             return "StringTable(" + std::to_string(t.size()) + " strings, " + std::to_string(t.nbytes()) + " bytes)";
           })
      .def("first_duplicate", &StringTable::first_duplicate,
           "(i, j) of the first string that appears twice (i < j), or (-1, -1).")
      .def_property_readonly("nbytes", &StringTable::nbytes, "Bytes held: strings, offsets and index.");

  m.def(
      "bpe_words",
      [](const StringTable& vocab, const StringTable& merges, const py::list& words, bool ignore_merges) {
        std::vector<std::string> w;
        w.reserve(words.size());
        for (py::handle o : words) w.push_back(utf8(o, "bpe_words"));
        std::vector<int32_t> out;
        {
          py::gil_scoped_release nogil;
          for (const auto& s : w) text::bpe_word(vocab, merges, s, ignore_merges, out);
        }
        return out;
      },
      py::arg("vocab"), py::arg("merges"), py::arg("words"), py::arg("ignore_merges"),
      "Byte-level BPE token ids of pre-tokenized words (see lmblocks.tokenize.bpe).");
  m.def(
      "spm_tokenize",
      [](const StringTable& vocab, py::array_t<float, py::array::c_style | py::array::forcecast> scores,
         py::array_t<int32_t, py::array::c_style | py::array::forcecast> byte_ids, py::handle s) {
        if (size_t(scores.size()) < vocab.size())
          throw ValueError("spm_tokenize: " + std::to_string(scores.size()) + " scores for " +
                           std::to_string(vocab.size()) + " tokens");
        if (byte_ids.size() != 256)
          throw ValueError("spm_tokenize: byte_ids has " + std::to_string(byte_ids.size()) + " entries, not 256");
        const std::string t = utf8(s, "spm_tokenize");
        std::vector<int32_t> out;
        {
          py::gil_scoped_release nogil;
          text::spm_tokenize(vocab, scores.data(), byte_ids.data(), t, out);
        }
        return out;
      },
      py::arg("vocab"), py::arg("scores"), py::arg("byte_ids"), py::arg("text"),
      "SentencePiece BPE token ids of text whose spaces are U+2581 (see lmblocks.tokenize.spm).");
}

}  // namespace lb::py_bind
