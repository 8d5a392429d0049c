"""Direct reads of CSR ranges (scoring.storage): the same values as h5py for every layout it
takes, h5py's path for the ones it does not, damage reported, and prefetching invisible."""

import zlib

import h5py
import numpy as np
import pytest
from helpers import write_h5ad

from scdr.scoring.errors import InputError
from scdr.scoring.reader import open_counts
from scdr.scoring.storage import range_reader

LAYOUTS = {
    "contiguous": {},
    "chunked": {"chunks": (1000,)},
    "gzip": {"chunks": (1000,), "compression": "gzip"},
    "shuffle+gzip": {"chunks": (1000,), "compression": "gzip", "shuffle": True},
    "shuffle": {"chunks": (1000,), "shuffle": True},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.float64, np.uint16])
def test_direct_ranges_equal_h5py(tmp_path, layout, dtype):
    path = tmp_path / "d.h5"
    values = np.random.default_rng(0).integers(0, 60000, 10_500).astype(dtype)
    with h5py.File(path, "w") as f:
        f.create_dataset("v", data=values, **LAYOUTS[layout])
    with h5py.File(path, "r") as f:
        reader = range_reader(f["v"], str(path), "v")
        assert reader is not None, f"{layout} should be read directly"
        try:
            for lo, hi in [(0, 10_500), (0, 1), (999, 1001), (1000, 2000), (3, 9_999),
                           (10_499, 10_500), (5, 5)]:
                got = reader.read(lo, hi)
                assert got.dtype == values.dtype
                np.testing.assert_array_equal(got, f["v"][lo:hi])
        finally:
            reader.close()


def test_other_filters_and_unallocated_chunks_stay_on_h5py(tmp_path):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("lzf", data=np.arange(5000, dtype=np.float32), chunks=(100,),
                         compression="lzf")
        sparse = f.create_dataset("holes", shape=(5000,), dtype=np.float32, chunks=(100,))
        sparse[:100] = 1.0  # the other chunks are never written: HDF5 reads them as fill
        f.create_dataset("big_endian", data=np.arange(50, dtype=">f4"))
    with h5py.File(path, "r") as f:
        for name in ("lzf", "holes", "big_endian"):
            assert range_reader(f[name], str(path), name) is None, name


def test_chunk_stored_without_its_filter_is_read_raw(tmp_path):
    """HDF5 may store a chunk with the deflate filter skipped (filter mask bit set)."""
    path = tmp_path / "d.h5"
    values = np.arange(3000, dtype=np.float32)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("v", shape=(3000,), dtype=np.float32, chunks=(1000,),
                              compression="gzip")
        ds.id.write_direct_chunk((0,), zlib.compress(values[:1000].tobytes()), filter_mask=0)
        ds.id.write_direct_chunk((1000,), values[1000:2000].tobytes(), filter_mask=1)
        ds.id.write_direct_chunk((2000,), zlib.compress(values[2000:].tobytes()), filter_mask=0)
    with h5py.File(path, "r") as f:
        reader = range_reader(f["v"], str(path), "v")
        assert reader is not None
        np.testing.assert_array_equal(reader.read(500, 2500), values[500:2500])
        np.testing.assert_array_equal(f["v"][:], values)  # h5py agrees with what was written
        reader.close()


@pytest.mark.parametrize("bad_chunk,message", [
    (b"\x78\x9c" + b"\x00not a deflate stream" * 20, "cannot be inflated"),
    (zlib.compress(np.ones(10, np.float32).tobytes()), "damaged"),  # inflates to the wrong size
])
def test_damaged_gzip_chunk_is_an_input_error(tmp_path, bad_chunk, message):
    path = tmp_path / "d.h5"
    good = zlib.compress(np.ones(1000, np.float32).tobytes())
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("v", shape=(3000,), dtype=np.float32, chunks=(1000,),
                              compression="gzip")
        for offset, chunk in ((0, good), (1000, bad_chunk), (2000, good)):
            ds.id.write_direct_chunk((offset,), chunk)
    with h5py.File(path, "r") as f:
        reader = range_reader(f["v"], str(path), "v")
        assert reader is not None
        with pytest.raises(InputError, match=message):
            reader.read(0, 3000)
        reader.close()


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_prefetch_and_compression_do_not_change_chunks(tmp_path, example_counts, compression):
    """Chunks read with and without prefetching, from gzip and plain files, are identical."""
    counts, genes, cells = example_counts
    plain = write_h5ad(tmp_path / "plain.h5ad", counts, genes, cells)
    other = write_h5ad(tmp_path / "other.h5ad", counts, genes, cells)
    if compression:
        _rewrite_x(other, chunks=(4096,), compression=compression, shuffle=True)

    def read(path, prefetch):
        with open_counts(path) as src:
            return [(c.start, c.stop, c.data.copy(), c.indices.copy(), c.indptr.copy(),
                     c.obs_names) for c in src.chunks(37, prefetch=prefetch)]

    reference = read(plain, False)
    for got in (read(plain, True), read(other, True), read(other, False)):
        assert len(got) == len(reference)
        for a, b in zip(got, reference):
            assert a[0:2] == b[0:2] and a[5] == b[5]
            for x, y in zip(a[2:5], b[2:5]):
                np.testing.assert_array_equal(x, y)


def test_prefetch_raises_the_bad_chunk_in_order(tmp_path, example_counts):
    """A chunk the reader refuses surfaces as its InputError after the good chunks before it."""
    counts, genes, cells = example_counts
    path = write_h5ad(tmp_path / "bad.h5ad", counts, genes, cells)
    _rewrite_x(path, chunks=(4096,), compression="gzip")
    with h5py.File(path, "r+") as f:
        f["X/data"][int(f["X/indptr"][200])] = 1e35  # beyond any count: the reader refuses it
    seen = []
    with open_counts(path) as src, pytest.raises(InputError, match="beyond any count"):
        for chunk in src.chunks(50, prefetch=True):
            seen.append(chunk.start)
    assert seen == [0, 50, 100, 150]


def _rewrite_x(path, **opts):
    """Store X/data and X/indices again with the given h5py dataset options."""
    with h5py.File(path, "r+") as f:
        for name in ("data", "indices"):
            values = f[f"X/{name}"][()]
            del f[f"X/{name}"]
            f["X"].create_dataset(name, data=values, **opts)


def test_unfiltered_values_are_read_only_views_that_stay_valid(tmp_path):
    """Mapped views: no copy, not writable, and still right after their pages were dropped from
    the process (two reads later)."""
    path = tmp_path / "d.h5"
    values = np.random.default_rng(1).random(100_000).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("v", data=values)
    with h5py.File(path, "r") as f:
        reader = range_reader(f["v"], str(path), "v")
        first = reader.read(0, 30_000)
        assert not first.flags.writeable and not first.flags.owndata
        later = [reader.read(lo, min(lo + 20_000, 100_000)) for lo in range(30_000, 100_000, 20_000)]
        np.testing.assert_array_equal(first, values[:30_000])
        np.testing.assert_array_equal(later[-1], values[90_000:100_000])
        del first, later
        reader.close()


def test_a_file_that_shrinks_while_read_is_an_input_error(tmp_path):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("v", data=np.arange(1_000_000, dtype=np.float32))
    f = h5py.File(path, "r")
    reader = range_reader(f["v"], str(path), "v")
    assert reader.read(0, 10).tolist() == list(range(10))
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)
    with pytest.raises(InputError, match="shrank"):
        reader.read(900_000, 1_000_000)
    reader.close()
    f.close()
