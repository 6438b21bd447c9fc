"""Readers round-trip every supported format and dtype; bad input gives a clear error; outputs are atomic."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_neuroedge.io.atomic import OutputExistsError, atomic_write_bytes, unique_path
from napari_neuroedge.io.stacks import InputError, SliceFolder, check_em_array, open_output, open_stack, write_array


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("kind", ["tif", "bigtiff", "ome", "compressed", "zarr", "folder", "npy"])
def test_reader_round_trip(tmp_path, dtype, kind):
    data = (np.random.default_rng(0).random((3, 20, 24)) * 200).astype(dtype)
    if kind == "tif":
        path = tmp_path / "s.tif"
        tifffile.imwrite(path, data, photometric="minisblack")
    elif kind == "bigtiff":
        path = tmp_path / "s.tif"
        tifffile.imwrite(path, data, bigtiff=True, photometric="minisblack")
    elif kind == "ome":
        path = tmp_path / "s.ome.tif"
        tifffile.imwrite(path, data, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 0.004,
                                                          "PhysicalSizeY": 0.004, "PhysicalSizeZ": 0.05})
    elif kind == "compressed":
        path = tmp_path / "s.tif"
        tifffile.imwrite(path, data, compression="zlib", photometric="minisblack")
    elif kind == "zarr":
        path = tmp_path / "s.zarr"
        write_array(path, data)
    elif kind == "npy":
        path = tmp_path / "s.npy"
        np.save(path, data)
    else:
        path = tmp_path / "slices"
        path.mkdir()
        for i, sl in enumerate(data):
            tifffile.imwrite(path / f"z{i:03d}.tif", sl)
    stack = open_stack(path)
    assert stack.shape == data.shape
    np.testing.assert_array_equal(np.asarray(stack.data[:]), data)
    np.testing.assert_array_equal(np.asarray(stack.data[1, 2:5, 3:7]), data[1, 2:5, 3:7])
    if kind == "ome":
        assert stack.voxel_size == pytest.approx((50.0, 4.0, 4.0))


def test_planar_three_slice_stack_reads_as_stack(tmp_path):
    import warnings

    data = np.arange(3 * 16 * 16, dtype=np.uint16).reshape(3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tifffile.imwrite(tmp_path / "three.tif", data)  # tifffile's default: stored as planar "RGB"
    np.testing.assert_array_equal(np.asarray(open_stack(tmp_path / "three.tif").data), data)


def test_uncompressed_tiff_is_memory_mapped(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((2, 16, 16), np.uint8))
    assert isinstance(open_stack(tmp_path / "a.tif").data, np.memmap)


def test_png_folder_and_2d(tmp_path):
    from skimage.io import imsave

    img = (np.arange(30 * 40) % 256).reshape(30, 40).astype(np.uint8)
    (tmp_path / "pngs").mkdir()
    imsave(tmp_path / "pngs" / "a.png", img, check_contrast=False)
    imsave(tmp_path / "pngs" / "b.png", img[::-1].copy(), check_contrast=False)
    stack = open_stack(tmp_path / "pngs")
    assert isinstance(stack.data, SliceFolder) and stack.shape == (2, 30, 40)
    np.testing.assert_array_equal(stack.data[1], img[::-1])
    np.testing.assert_array_equal(open_stack(tmp_path / "pngs" / "a.png").data, img)


@pytest.mark.parametrize("data,match", [
    (np.zeros((64, 64, 3), np.uint8), "RGB"),
    (np.zeros((2, 64, 64, 4), np.uint8), "RGB"),
    (np.zeros((2, 3, 16, 16), np.uint8), "4D"),
    (np.zeros((0, 16, 16), np.uint8), "empty"),
    (np.zeros((16, 16), np.int64), "dtype int64"),
    (np.zeros((1, 16), np.uint8), "too small"),
])
def test_bad_arrays_get_clear_errors(data, match):
    with pytest.raises(InputError, match=match):
        check_em_array(data, "x.tif")


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        open_stack(tmp_path / "missing.tif")
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(InputError, match="corrupt.tif"):
        open_stack(bad)
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    with pytest.raises(InputError, match="RGB"):
        open_stack(tmp_path / "rgb.tif")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .tif"):
        open_stack(tmp_path / "empty")
    (tmp_path / "x.jpg2").write_bytes(b"")
    with pytest.raises(InputError, match="unsupported"):
        open_stack(tmp_path / "x.jpg2")


@pytest.mark.parametrize("name", ["out.tif", "out.zarr"])
def test_output_is_atomic_and_never_overwrites(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(RuntimeError):
        with open_output(path, (2, 8, 8), np.uint8) as out:
            out[0] = 1
            raise RuntimeError("cancelled mid-run")
    assert not path.exists() and list(tmp_path.iterdir()) == []  # nothing half-written left behind
    with open_output(path, (2, 8, 8), np.uint8) as out:
        out[1] = 7
    back = np.asarray(open_stack(path).data[:])
    assert back[1].min() == 7 and back[0].max() == 0
    with pytest.raises(OutputExistsError):
        with open_output(path, (2, 8, 8), np.uint8):
            pass
    np.testing.assert_array_equal(np.asarray(open_stack(path).data[:]), back)


def test_atomic_bytes_and_unique_names(tmp_path):
    p = atomic_write_bytes(tmp_path / "a.json", b"1")
    with pytest.raises(OutputExistsError):
        atomic_write_bytes(p, b"2")
    assert p.read_bytes() == b"1"
    assert unique_path(p).name == "a-1.json"
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]


def test_one_already_exists_error_and_atomic_replace(tmp_path):
    import pickle

    from napari_neuroedge.io.atomic import check_free, replace_atomically

    p = atomic_write_bytes(tmp_path / "a.json", b"1")
    with pytest.raises(OutputExistsError) as info:
        check_free(tmp_path / "free.tif", None, p)
    assert str(info.value) == f"{p} already exists; choose another name (nothing was overwritten)"
    again = pickle.loads(pickle.dumps(info.value))  # as a Dask worker's error comes back to the client
    assert type(again) is OutputExistsError and str(again) == str(info.value)
    assert str(OutputExistsError(p, "the result stays in x")) == f"{p} already exists; the result stays in x"
    replace_atomically(p, lambda tmp: tmp.write_bytes(b"2"))  # the files meant to be rewritten: in one step
    with pytest.raises(ValueError):
        replace_atomically(p, lambda tmp: (tmp.write_bytes(b"half"), int("x")))
    assert p.read_bytes() == b"2" and [f.name for f in tmp_path.iterdir()] == ["a.json"]


def test_atomic_dir_commit_hook_publishes_or_leaves_nothing(tmp_path):
    """atomic_dir(commit=...): the hook publishes the finished folder (here into another folder); when it refuses,
    the temporary folder (made ``beside``) is deleted and the destination's parent was never created."""
    from napari_neuroedge.io.atomic import atomic_dir

    dest, elsewhere = tmp_path / "image" / "labels" / "x", tmp_path / "published"
    with atomic_dir(dest, commit=lambda tmp: tmp.rename(elsewhere), beside=tmp_path) as tmp:
        tmp.mkdir()
        (tmp / "a").write_bytes(b"1")
    assert (elsewhere / "a").read_bytes() == b"1" and not (tmp_path / "image").exists()

    def refuse(tmp):
        raise ValueError("not an image")

    with pytest.raises(ValueError, match="not an image"):
        with atomic_dir(dest, commit=refuse, beside=tmp_path) as tmp:
            tmp.mkdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["published"]


@pytest.mark.parametrize("name", ["c.zarr", "c.ome.zarr"])
def test_zarr_outputs_default_to_the_one_chunk_shape(tmp_path, name):
    """Plain and OME-Zarr outputs take chunks.chunks_for: one slice deep, at most 1024 px in y and x."""
    from napari_neuroedge.io.chunks import chunks_for

    assert chunks_for((3, 2500, 700)) == (1, 1024, 700) and chunks_for((0, 5)) == (1, 5)
    with open_output(tmp_path / name, (3, 2500, 700), np.uint8) as out:
        out[0, :2, :2] = 1
    arr = zarr.open_array(str(tmp_path / name / "0") if name.endswith(".ome.zarr") else str(tmp_path / name), mode="r")
    assert tuple(arr.chunks) == (1, 1024, 700)
