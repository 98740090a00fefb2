// pybind11 bindings: fastis._C. Deliberately no libtorch: arrays cross as numpy buffers and
// the Python layer wraps them as tensors, so a torch upgrade never breaks this module.
//
// Every method checks its whole input before touching the structure, releases the GIL for
// the loops, and holds the object's mutex, so concurrent calls from Python threads are safe
// (they run one at a time). The GIL is released before the mutex is taken and retaken only
// after it is dropped, so the two locks cannot deadlock.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <optional>
#include <string>
#include <utility>

#include "alias_table.hpp"
#include "parallel.hpp"
#include "recycled_memory.hpp"
#include "rng.hpp"
#include "row_scores.hpp"
#include "simd.hpp"
#include "sum_tree.hpp"
#include "validate.hpp"

namespace py = pybind11;

namespace fastis {
namespace {

template <class Core>
struct Locked {
  template <class... Args>
  explicit Locked(Args&&... args) : core(std::forward<Args>(args)...) {}
  Locked(const Locked&) = delete;
  Locked& operator=(const Locked&) = delete;
  Locked(Locked&&) = delete;
  Core core;
  std::mutex mutex;
};

using PySumTree = Locked<SumTree>;
using PyAliasTable = Locked<AliasTable>;

// Runs fn(core) without the GIL and under the object's mutex.
template <class Core, class Fn>
auto locked_call(Locked<Core>& obj, Fn&& fn) {
  py::gil_scoped_release no_gil;
  std::lock_guard<std::mutex> guard(obj.mutex);
  return fn(obj.core);
}

void require_1d_contiguous(const py::array& a, const char* name) {
  if (a.ndim() != 1) {
    throw py::value_error(std::string(name) + " must be 1-D, got " + std::to_string(a.ndim()) +
                          " dimensions");
  }
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string(name) + " must be contiguous");
  }
}

template <class Fn>
auto with_weights(const py::array& w, const char* name, Fn&& fn) {
  require_1d_contiguous(w, name);
  if (w.dtype().is(py::dtype::of<double>())) return fn(static_cast<const double*>(w.data()));
  if (w.dtype().is(py::dtype::of<float>())) return fn(static_cast<const float*>(w.data()));
  throw py::type_error(std::string(name) + " must be float32 or float64, got " +
                       std::string(py::str(w.dtype())));
}

template <class Fn>
auto with_indices(const py::array& idx, const char* name, Fn&& fn) {
  require_1d_contiguous(idx, name);
  if (idx.dtype().is(py::dtype::of<int64_t>())) return fn(static_cast<const int64_t*>(idx.data()));
  if (idx.dtype().is(py::dtype::of<int32_t>())) return fn(static_cast<const int32_t*>(idx.data()));
  throw py::type_error(std::string(name) + " must be int32 or int64, got " +
                       std::string(py::str(idx.dtype())));
}

// w_i / total (divide = true) or w_i for the given indices.
template <class Core>
py::array_t<double> gather(Locked<Core>& obj, const py::array& idx, bool divide) {
  const auto count = static_cast<size_t>(idx.size());
  py::array_t<double> out(static_cast<py::ssize_t>(count));
  double* dst = out.mutable_data();
  with_indices(idx, "indices", [&](auto* ix) {
    locked_call(obj, [&](Core& core) {
      check_indices(ix, count, core.size(), "indices");
      const double* w = core.weights();
      const double total = core.total();
      if (divide && !(total > 0.0)) {
        throw std::invalid_argument("probabilities are undefined: all weights are zero");
      }
      for (size_t i = 0; i < count; ++i) dst[i] = divide ? w[ix[i]] / total : w[ix[i]];
      return 0;
    });
    return 0;
  });
  return out;
}

template <class Core>
py::tuple sample(Locked<Core>& obj, int64_t k, bool with_probabilities) {
  if (k < 0) throw py::value_error("k must be >= 0, got " + std::to_string(k));
  py::array_t<int64_t> idx(k);
  py::object prob = py::none();
  double* prob_out = nullptr;
  if (with_probabilities) {
    py::array_t<double> p(k);
    prob_out = p.mutable_data();
    prob = std::move(p);
  }
  int64_t* out = idx.mutable_data();
  locked_call(obj, [&](Core& core) {
    core.sample(static_cast<uint64_t>(k), out, prob_out);
    return 0;
  });
  return py::make_tuple(idx, prob);
}

template <class Core>
py::array_t<double> all_weights(Locked<Core>& obj) {
  py::array_t<double> out(static_cast<py::ssize_t>(obj.core.size()));
  double* dst = out.mutable_data();
  locked_call(obj, [&](Core& core) {
    std::copy(core.weights(), core.weights() + core.size(), dst);
    return 0;
  });
  return out;
}

// A new structure from a 1-D float32/float64 weight array (copied and checked in C++).
template <class Obj, class... Options>
Obj* build(const py::array& w, Options... options) {
  return with_weights(w, "weights", [&](auto* wp) {
    const auto n = static_cast<uint64_t>(w.size());
    py::gil_scoped_release no_gil;
    return new Obj(wp, n, options...);
  });
}

// Methods and properties that both structures share.
template <class Core>
void bind_common(py::class_<Locked<Core>>& cls) {
  using Obj = Locked<Core>;
  cls.def("__len__", [](Obj& o) { return o.core.size(); })
      .def_property_readonly("total", [](Obj& o) { return o.core.total(); })
      .def_property_readonly("nbytes", [](Obj& o) { return o.core.nbytes(); })
      .def_property("seed", [](Obj& o) { return o.core.rng().seed; },
                    [](Obj& o, uint64_t s) { o.core.rng().seed = s; })
      .def_property("counter", [](Obj& o) { return o.core.rng().counter; },
                    [](Obj& o, uint64_t c) { o.core.rng().counter = c; })
      .def("sample", &sample<Core>, py::arg("k"), py::arg("with_probabilities") = false)
      .def("probabilities",
           [](Obj& o, const py::array& idx) { return gather(o, idx, true); })
      .def("get", [](Obj& o, const py::array& idx) { return gather(o, idx, false); })
      .def("weights", &all_weights<Core>);
}

// Row layout of a 2-D float32/float64 logits array whose rows are contiguous.
struct RowLayout {
  int64_t stride, classes;
};

RowLayout row_layout(const py::array& logits) {
  if (logits.ndim() != 2) throw py::value_error("logits must be 2-D");
  const auto item = static_cast<py::ssize_t>(logits.itemsize());
  if (logits.shape(0) > 0 && logits.shape(1) > 1 && logits.strides(1) != item) {
    throw py::value_error("logits rows must be contiguous");
  }
  if (logits.shape(0) > 0 && logits.strides(0) % item != 0) {
    throw py::value_error("misaligned logits rows");
  }
  return {logits.shape(0) > 0 ? logits.strides(0) / item : 0, logits.shape(1)};
}

// Calls fn with the logits' data as const float* or const double*.
template <class Fn>
void with_logits(const py::array& logits, Fn&& fn) {
  if (py::isinstance<py::array_t<float>>(logits)) {
    fn(static_cast<const float*>(logits.data()));
  } else if (py::isinstance<py::array_t<double>>(logits)) {
    fn(static_cast<const double*>(logits.data()));
  } else {
    throw py::type_error("logits must be float32 or float64");
  }
}

// The messages of fastis.ops's own checks, so either path fails the same way.
void check_targets(const int64_t* target, int64_t count, int64_t classes, int64_t ignore_index) {
  for (int64_t i = 0; i < count; ++i) {
    const int64_t y = target[i];
    if ((y < 0 || y >= classes) && y != ignore_index) {
      throw py::value_error("target[" + std::to_string(i) + "] = " + std::to_string(y) +
                            " is outside [0, " + std::to_string(classes) +
                            ") and is not ignore_index (" + std::to_string(ignore_index) + ")");
    }
  }
}

void check_rows(const int64_t* rows, int64_t count, int64_t num_rows) {
  for (int64_t i = 0; i < count; ++i) {
    if (rows[i] < 0 || rows[i] >= num_rows) {
      throw py::index_error("rows[" + std::to_string(i) + "] = " + std::to_string(rows[i]) +
                            " is outside [0, " + std::to_string(num_rows) + ")");
    }
  }
}

}  // namespace
}  // namespace fastis

PYBIND11_MODULE(_C, m) {
  using namespace fastis;
  m.doc() = "fastis C++ core: SumTree, AliasTable, Philox4x64-10 (no libtorch).";

  auto tree = py::class_<PySumTree>(m, "SumTree");
  tree.def_static(
          "zeros",
          [](uint64_t n) {
            py::gil_scoped_release no_gil;
            return new PySumTree(n);
          },
          py::arg("n"), "A tree of n zero weights.")
      .def_static("from_weights", &build<PySumTree>, py::arg("weights"))
      .def("update", [](PySumTree& o, const py::array& idx, const py::array& w) {
        if (idx.size() != w.size()) {
          throw py::value_error("length mismatch: " + std::to_string(idx.size()) +
                                " indices but " + std::to_string(w.size()) + " weights");
        }
        const auto count = static_cast<size_t>(idx.size());
        with_indices(idx, "indices", [&](auto* ix) {
          return with_weights(w, "weights", [&](auto* wp) {
            return locked_call(o, [&](SumTree& t) {
              check_indices(ix, count, t.size(), "indices");
              check_weights(wp, count, "weights");
              t.update(ix, wp, count);
              return 0;
            });
          });
        });
      });
  bind_common(tree);

  auto table = py::class_<PyAliasTable>(m, "AliasTable");
  table.def_static("from_weights", &build<PyAliasTable>, py::arg("weights"));
  table.def_static(
      "_from_weights_wide", [](const py::array& w) { return build<PyAliasTable>(w, true); },
      py::arg("weights"), "A table with 16-byte (float64 keep) entries at any n, for tests.");
  table.def("_entries", [](PyAliasTable& o) {
    const auto n = static_cast<py::ssize_t>(o.core.size());
    py::array_t<double> keep(n);
    py::array_t<int64_t> alias(n);
    double* keep_out = keep.mutable_data();
    int64_t* alias_out = alias.mutable_data();
    locked_call(o, [&](AliasTable& t) {
      t.entries(keep_out, alias_out);
      return 0;
    });
    return py::make_tuple(keep, alias);
  }, "(keep, alias) arrays of the table, for tests.");
  bind_common(table);

  m.def(
      "cross_entropy_row_scores",
      [](const py::array& logits, const py::array_t<int64_t, py::array::c_style>& target,
         const std::optional<py::array_t<int64_t, py::array::c_style>>& rows,
         int64_t ignore_index, bool validate) {
        const RowLayout layout = row_layout(logits);
        const int64_t count = target.shape(0);
        if (rows && rows->shape(0) != count) throw py::value_error("rows / target mismatch");
        if (!rows && logits.shape(0) != count) throw py::value_error("logits / target mismatch");
        const int64_t* row_ptr = rows ? rows->data() : nullptr;
        const int64_t* target_ptr = target.data();
        if (validate) {
          check_targets(target_ptr, count, layout.classes, ignore_index);
          if (rows) check_rows(row_ptr, count, logits.shape(0));
        }
        py::array_t<float> loss(count), grad_norm(count), lse(count);
        float *l = loss.mutable_data(), *g = grad_norm.mutable_data(), *e = lse.mutable_data();
        with_logits(logits, [&](const auto* z) {
          py::gil_scoped_release no_gil;
          cross_entropy_row_scores(z, layout.stride, logits.shape(0), layout.classes, row_ptr,
                                   target_ptr, count, ignore_index, l, g, e);
        });
        return py::make_tuple(loss, grad_norm, lse);
      },
      py::arg("logits"), py::arg("target"), py::arg("rows"), py::arg("ignore_index"),
      py::arg("validate"),
      "Cross-entropy loss, gradient norm and log-sum-exp per row (float32 [count]), computed "
      "row by row in double; with validate, targets and rows are checked first.");
  m.def(
      "cross_entropy_row_grad",
      [](const py::array& logits, const py::array_t<int64_t, py::array::c_style>& target,
         const py::array_t<float, py::array::c_style>& lse,
         const py::array_t<float, py::array::c_style>& loss,
         const py::array_t<float, py::array::c_style>& scale, int64_t ignore_index) {
        const RowLayout layout = row_layout(logits);
        const int64_t count = logits.shape(0);
        if (target.shape(0) != count || lse.shape(0) != count || loss.shape(0) != count ||
            scale.shape(0) != count) {
          throw py::value_error("logits, target, lse, loss and scale disagree on the rows");
        }
        py::array_t<float> grad({count, layout.classes});
        float* out = grad.mutable_data();
        with_logits(logits, [&](const auto* z) {
          py::gil_scoped_release no_gil;
          cross_entropy_row_grad(z, layout.stride, layout.classes, target.data(), count,
                                 ignore_index, lse.data(), loss.data(), scale.data(), out);
        });
        return grad;
      },
      py::arg("logits"), py::arg("target"), py::arg("lse"), py::arg("loss"), py::arg("scale"),
      py::arg("ignore_index"),
      "float32 [N, C]: scale * (softmax - onehot) per row, from the forward's lse and loss.");
  m.def(
      "empty_cache",
      [] {
        py::gil_scoped_release no_gil;
        return recycled::release_all();
      },
      "Unmaps the memory kept from freed structures for reuse; returns how many bytes it held.");
  m.def(
      "set_cache_limit",
      [](int64_t nbytes) {
        if (nbytes < 0) throw py::value_error("the cache limit must be >= 0 bytes");
        py::gil_scoped_release no_gil;
        return recycled::set_limit(static_cast<size_t>(nbytes));
      },
      py::arg("nbytes"),
      "Sets the most bytes kept from freed structures for reuse (0 turns it off); returns the "
      "previous limit.");
  m.def("cached_bytes", &recycled::kept_bytes,
        "Bytes kept from freed structures for reuse by the next build of the same size.");
  m.def("get_num_threads", &get_num_threads);
  m.def("set_num_threads", &set_num_threads, py::arg("threads"));
  m.def(
      "_set_avx512",
      [](bool enabled) {
        py::gil_scoped_release no_gil;
        return set_simd_enabled(Simd::kAvx512, enabled);
      },
      py::arg("enabled"),
      "Allows (True) or forbids the AVX-512 code paths; returns the previous setting. For tests.");
  m.def(
      "_avx512_active", [] { return simd_enabled(Simd::kAvx512); },
      "Whether the AVX-512 code paths run (CPU support and not forbidden).");
  m.def(
      "philox4x64",
      [](uint64_t block, uint64_t seed) {
        const PhiloxBlock b = philox4x64(block, seed);
        return py::make_tuple(b.word[0], b.word[1], b.word[2], b.word[3]);
      },
      py::arg("block"), py::arg("seed"),
      "The four 64-bit words of Philox4x64-10 block `block` under key `seed`.");
}
