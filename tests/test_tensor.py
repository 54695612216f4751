"""lb.Tensor: zero-copy NumPy/DLPack interop, lifetimes, views against NumPy's own indexing,
conversions against NumPy/ml_dtypes, memory-mapped tensors, and bad input."""

import gc
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lmblocks as lb

ml_dtypes = pytest.importorskip("ml_dtypes")
rng = np.random.default_rng(1234)


def test_shares_memory_both_ways():
    a = rng.standard_normal((5, 7)).astype(np.float32)
    t = lb.asarray(a)
    assert np.shares_memory(np.asarray(t), a)
    a[2, 3] = 42.0  # written from NumPy, seen by the tensor
    assert np.asarray(t)[2, 3] == 42.0
    np.asarray(t)[0, 0] = -1.0  # written through the tensor's view, seen by the array
    assert a[0, 0] == -1.0
    assert t.data_ptr == a.ctypes.data


def test_array_outlives_tensor_and_tensor_outlives_array():
    a = np.arange(1000, dtype=np.float32)
    t = lb.asarray(a)
    del a
    gc.collect()
    np.testing.assert_array_equal(np.asarray(t), np.arange(1000, dtype=np.float32))

    t = lb.zeros(64, 3)
    v = np.asarray(t)
    v[:] = 5.0
    del t
    gc.collect()
    assert v.sum() == 64 * 3 * 5.0


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int8, np.uint8, np.int16, np.int32,
                                   np.int64, ml_dtypes.bfloat16])
def test_dtypes_round_trip_without_copy(dtype):
    a = (rng.standard_normal((3, 4)) * 10).astype(dtype)
    t = lb.asarray(a)
    b = np.asarray(t)
    assert b.dtype == np.dtype(dtype)
    assert np.shares_memory(a, b)
    np.testing.assert_array_equal(b, a)


def test_bf16_without_ml_dtypes_is_a_uint16_view():
    code = textwrap.dedent("""
        import sys; sys.modules["ml_dtypes"] = None
        import numpy as np, lmblocks as lb
        t = lb.asarray(np.array([1.0, -2.5, 3.0], np.float32)).astype("bf16")
        v = np.asarray(t)
        assert v.dtype == np.uint16, v.dtype
        print(list(v))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # bf16 bits of 1.0, -2.5, 3.0 (IEEE single's top 16 bits)
    assert out.strip() == "[np.uint16(16256), np.uint16(49184), np.uint16(16448)]" or out.strip() == "[16256, 49184, 16448]"


KEYS = [
    (slice(None), slice(None)),
    (1,),
    (-1, slice(2, None)),
    (slice(None, None, 2), slice(1, 6, 3)),
    (slice(None, None, -1),),
    (slice(5, 0, -2), -3),
    (Ellipsis, 2),
    (None, slice(1, 3), None),
    (slice(100, 200),),
    (2, Ellipsis, None),
]


@pytest.mark.parametrize("key", KEYS, ids=str)
def test_indexing_matches_numpy(key):
    a = rng.standard_normal((6, 7)).astype(np.float32)
    t = lb.asarray(a)
    got = np.asarray(t[key])
    want = a[key]
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    if want.size:
        assert np.shares_memory(got, a)


def test_transpose_permute_view_reshape_match_numpy():
    a = rng.standard_normal((2, 3, 4)).astype(np.float32)
    t = lb.asarray(a)
    np.testing.assert_array_equal(np.asarray(t.T), a.T)
    np.testing.assert_array_equal(np.asarray(t.transpose(1, 0, 2)), a.transpose(1, 0, 2))
    np.testing.assert_array_equal(np.asarray(t.permute(2, 0, 1)), a.transpose(2, 0, 1))
    np.testing.assert_array_equal(np.asarray(t.swapaxes(0, 2)), a.swapaxes(0, 2))
    v = t.view(6, 4)
    assert np.shares_memory(np.asarray(v), a)
    np.testing.assert_array_equal(np.asarray(v), a.reshape(6, 4))
    np.testing.assert_array_equal(np.asarray(t.view(-1)), a.reshape(-1))
    # A transposed view cannot be flattened without a copy: view refuses, reshape copies.
    tt = t.transpose(2, 1, 0)
    with pytest.raises(ValueError, match="view"):
        tt.view(24)
    r = tt.reshape(24)
    np.testing.assert_array_equal(np.asarray(r), a.transpose(2, 1, 0).reshape(24))
    assert not np.shares_memory(np.asarray(r), a)
    # Splitting a contiguous axis of a strided view is still a view.
    s = t[:, :, ::2].view(2, 3, 2, 1)
    np.testing.assert_array_equal(np.asarray(s), a[:, :, ::2].reshape(2, 3, 2, 1))
    assert np.shares_memory(np.asarray(s), a)


def test_contiguous_clone_and_alignment():
    a = rng.standard_normal((8, 9)).astype(np.float32)
    t = lb.asarray(a)[:, ::2]
    assert not t.is_contiguous
    c = t.contiguous()
    assert c.is_contiguous and c.data_ptr % 64 == 0
    np.testing.assert_array_equal(np.asarray(c), a[:, ::2])
    assert lb.asarray(a).contiguous().data_ptr == a.ctypes.data  # already contiguous: no copy
    assert lb.empty(3, 5).data_ptr % 64 == 0
    assert lb.empty((7,), dtype="bf16").data_ptr % 64 == 0
    k = lb.asarray(a).clone()
    assert not np.shares_memory(np.asarray(k), a)


@pytest.mark.parametrize("src,dst", [("f32", "f16"), ("f32", "bf16"), ("f16", "f32"), ("bf16", "f32"),
                                     ("f32", "i32"), ("i64", "f32"), ("f32", "f64")])
def test_astype_matches_numpy(src, dst):
    np_of = {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16, "i32": np.int32,
             "i64": np.int64, "f64": np.float64}
    x = rng.standard_normal(1000) * 300
    x[:4] = [0.0, -0.0, 65504.0, 1e-6]
    a = x.astype(np_of[src])
    got = np.asarray(lb.asarray(a).astype(dst))
    want = a.astype(np_of[dst])
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast", "ignore:invalid value encountered in cast")
def test_f16_bf16_rounding_edges():
    # ties-to-even, overflow to inf, subnormals, NaN: compared bit for bit with NumPy / ml_dtypes.
    x = np.array([1 + 2 ** -11, 1 + 3 * 2 ** -11, 65520.0, 70000.0, 6e-8, 3e-8, 2.9e-8, -1e-5, np.inf,
                  -np.inf, np.nan, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.4e38], np.float32)
    for dst, ref in (("f16", np.float16), ("bf16", ml_dtypes.bfloat16)):
        got = np.asarray(lb.asarray(x).astype(dst)).view(np.uint16)
        want = x.astype(ref).view(np.uint16)
        np.testing.assert_array_equal(got[~np.isnan(x)], want[~np.isnan(x)])
        assert np.isnan(np.asarray(lb.asarray(x).astype(dst)).astype(np.float32)[10])
    big = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)  # every bf16 value
    np.testing.assert_array_equal(np.asarray(lb.asarray(big).astype("bf16")).view(np.uint16)[~np.isnan(big)],
                                  big.astype(ml_dtypes.bfloat16).view(np.uint16)[~np.isnan(big)])
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)  # every f16 value, up and back
    got = np.asarray(lb.asarray(halves).astype("f32"))
    np.testing.assert_array_equal(got[~np.isnan(halves)], halves.astype(np.float32)[~np.isnan(halves)])


def test_dlpack_export_is_zero_copy():
    a = rng.standard_normal((4, 6)).astype(np.float32)
    t = lb.asarray(a)[1:, ::2]
    b = np.from_dlpack(t)
    np.testing.assert_array_equal(b, a[1:, ::2])
    assert np.shares_memory(b, a)
    assert t.__dlpack_device__() == (1, 0)
    del t
    gc.collect()
    np.testing.assert_array_equal(b, a[1:, ::2])


def test_dlpack_legacy_capsule_and_readonly(tmp_path):
    a = rng.standard_normal(10).astype(np.float32)
    t = lb.asarray(a)

    class Legacy:  # a producer that only speaks pre-1.0 DLPack
        def __dlpack__(self, **kw):
            return t.__dlpack__()

        def __dlpack_device__(self):
            return t.__dlpack_device__()

    b = np.from_dlpack(Legacy())
    assert np.shares_memory(b, a)
    p = tmp_path / "w.bin"
    a.tofile(p)
    m = lb.from_file(p, 0, (10,), "f32")
    r = np.from_dlpack(m)
    np.testing.assert_array_equal(r, a)
    assert not r.flags.writeable


def test_memory_mapped_tensor(tmp_path):
    a = rng.standard_normal((3, 5)).astype(np.float32)
    p = tmp_path / "weights.bin"
    with open(p, "wb") as f:
        f.write(b"HEADER!!")
        f.write(a.tobytes())
    f = lb.MappedFile(p)
    assert f.size == 8 + a.nbytes
    t = f.tensor(8, (3, 5), "f32")
    assert t.readonly
    v = np.asarray(t)
    np.testing.assert_array_equal(v, a)
    assert not v.flags.writeable
    with pytest.raises(ValueError):
        v[0, 0] = 1.0
    del f
    gc.collect()
    np.testing.assert_array_equal(np.asarray(t[1]), a[1])  # the map lives while a view does


@pytest.mark.parametrize("offset,shape,dtype", [
    (8, (3, 6), "f32"),        # one row too many
    (9, (3, 5), "f32"),        # shifted past the end
    (-1, (1,), "f32"),         # negative offset
    (0, (1 << 40, 1 << 40), "f32"),  # element count overflows
    (1 << 62, (1,), "u8"),     # offset far past the end
    (0, (1, 33), "q8_0"),      # not a whole number of blocks
])
def test_memory_map_rejects_regions_outside_the_file(tmp_path, offset, shape, dtype):
    p = tmp_path / "w.bin"
    p.write_bytes(b"\0" * (8 + 60))
    with pytest.raises(ValueError, match="w.bin|multiple|large|negative"):
        lb.from_file(p, offset, shape, dtype)


def test_memory_map_missing_file(tmp_path):
    with pytest.raises(OSError, match="nope.bin"):
        lb.MappedFile(tmp_path / "nope.bin")


def test_quantized_dtype_table_and_byte_view():
    info = lb.dtype_info("q4_k")
    assert (info["block_size"], info["type_size"], info["ggml_type"]) == (256, 144, 12)
    assert lb.dtype_info("q8_0")["type_size"] == 34 and lb.dtype_info("bf16")["ggml_type"] == 30
    assert {"f32", "f16", "bf16", "i8", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k",
            "q6_k"} <= set(lb.dtypes())
    t = lb.empty(4, 64, dtype="q4_0")
    assert t.shape == (4, 64) and t.nbytes == 4 * 2 * 18 and t.itemsize == 0
    assert np.asarray(t).shape == (4, 36) and np.asarray(t).dtype == np.uint8
    assert np.asarray(t[1:3]).shape == (2, 36)
    with pytest.raises(ValueError, match="multiple of 32"):
        lb.empty(4, 40, dtype="q4_0")
    with pytest.raises(ValueError, match="blocked"):
        t[:, 1:]


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="dtype"):
        lb.asarray(np.array([1 + 2j]))
    with pytest.raises(TypeError, match="dtype"):
        lb.asarray(np.array(["a"], dtype=object))
    with pytest.raises(TypeError, match="big-endian"):
        lb.asarray(np.arange(3, dtype=">f4"))
    with pytest.raises(TypeError, match="unknown dtype"):
        lb.empty(3, dtype="f12")
    t = lb.asarray(np.zeros((2, 3), np.float32))
    with pytest.raises(IndexError):
        t[2]
    with pytest.raises(IndexError, match="too many"):
        t[0, 0, 0]
    with pytest.raises(TypeError, match="fancy"):
        t[[0, 1]]
    with pytest.raises(ValueError, match="reshape"):
        t.reshape(4, 2)
    with pytest.raises(ValueError, match="repeated"):
        t.permute(0, 0)
    with pytest.raises(ValueError, match="too large"):
        lb.empty(1 << 40, 1 << 30)
    with pytest.raises(ValueError, match="negative"):
        lb.empty(-1, 3)


def test_repr():
    assert repr(lb.zeros(2, 3)) == "Tensor(shape=(2, 3), dtype=f32)"
    assert "strided" in repr(lb.zeros(2, 3).T)


def test_docstring_examples_run():
    import doctest

    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = [t for obj, name in [(lb, "lmblocks"), (lb.Tensor, "Tensor"), (lb.asarray, "asarray")]
             for t in finder.find(obj, name, globs={})]
    for t in tests:
        runner.run(t)
    assert sum(len(t.examples) for t in tests) >= 5
    assert runner.failures == 0
