"""The IDX format of MNIST, Fashion-MNIST, KMNIST and the like: a reader and a loader of such a folder as an image
data set.

The format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian header, then the data, row-major.

* bytes 0-1: zero; byte 2: the element type (``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32,
  ``0x0D`` float32, ``0x0E`` float64); byte 3: the number of dimensions ``d``.
* ``d`` big-endian int32 sizes, then ``prod(sizes)`` elements (big-endian for multi-byte types).

So image files start with the magic number 2051 (``0x00000803``: uint8, 3 dimensions ``count, rows, cols``; pixels
from byte 16) and label files with 2049 (``0x00000801``: uint8, 1 dimension ``count``; labels from byte 8). Files may
be gzipped (detected from their first bytes, not their name).

A data set folder holds, for each split, an image file and a label file under the original release names
(``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``,
each optionally ``.gz``; the ``train-images.idx3-ubyte`` spelling of some MNIST copies is accepted too), either
directly or in a ``raw/`` subfolder (torchvision's ``FashionMNIST/raw/``, ``MNIST/raw/``, ``KMNIST/raw/``).
``train`` becomes the split ``train`` and ``t10k`` the split ``test``.

Images are stored in the ``datasets.Image`` column as uncompressed binary PGM (netpbm ``P5``: a 15-byte header and
the raw pixels), built with one vectorised copy into an Arrow buffer: no per-image encoding, so 60,000 28x28 images
load in well under a second once the file is decompressed, and PIL decodes each one as a mode ``"L"`` image.
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
from datasets.table import InMemoryTable

logger = logging.getLogger(__name__)

__all__ = ["IDX_SPLIT_FILES", "IdxFormatError", "find_idx_files", "is_idx_folder", "load_idx_folder", "read_idx"]

#: Canonical split -> (images, labels) base names of the original releases.
IDX_SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class IdxFormatError(ValueError):
    """An IDX file is truncated, has a wrong magic number or shape, or does not match its partner file."""


def _read_bytes(path: Path) -> bytes:
    """The decompressed content of ``path`` (gzip detected from the magic bytes ``1f 8b``)."""
    with open(path, "rb") as handle:
        content = handle.read()
    if content[:2] != b"\x1f\x8b":
        return content
    try:
        return gzip.decompress(content)
    except (EOFError, OSError, zlib.error) as err:  # a cut download ends before the gzip end-of-stream marker
        raise IdxFormatError(
            f"{path}: the gzip stream is truncated or corrupt ({err}); download the file again."
        ) from err


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file (gzipped or not) into a numpy array of its declared type and shape.

    Args:
        path: the file.
        expected_magic: e.g. 2051 (uint8 images, 3 dimensions) or 2049 (uint8 labels, 1 dimension); ``None``
            accepts any valid IDX type and rank.

    Returns:
        A read-only array in native byte order, shape as declared by the header (uint8 files: a zero-copy view).

    Raises:
        IdxFormatError: naming the file, for a wrong magic number, a header or data shorter than declared
            (truncated), trailing bytes, or a corrupt gzip stream.
    """
    path = Path(path)
    content = _read_bytes(path)
    if len(content) < 4:
        raise IdxFormatError(f"{path}: {len(content)} bytes, too short for an IDX header (truncated or empty file).")
    magic = int.from_bytes(content[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        kind = {IMAGES_MAGIC: "images (uint8, 3 dimensions)", LABELS_MAGIC: "labels (uint8, 1 dimension)"}
        raise IdxFormatError(
            f"{path}: magic number {magic} (0x{magic:08x}), expected {expected_magic} for IDX "
            f"{kind.get(expected_magic, 'data')}. Is it the right file (images vs labels), or not an IDX file?"
        )
    if content[0] != 0 or content[1] != 0 or content[2] not in _DTYPES or content[3] == 0:
        raise IdxFormatError(f"{path}: magic number 0x{magic:08x} is not an IDX header (00 00 <type> <rank>).")
    dtype, rank = _DTYPES[content[2]], content[3]
    header_size = 4 + 4 * rank
    if len(content) < header_size:
        raise IdxFormatError(f"{path}: truncated header ({len(content)} bytes, {header_size} needed for {rank} "
                             "dimension sizes).")
    shape = tuple(int.from_bytes(content[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(content) - header_size
    if actual < expected:
        raise IdxFormatError(
            f"{path}: truncated: {actual} bytes of data after the header, expected {expected} for shape "
            f"{' x '.join(map(str, shape))} ({dtype.name}). Download the file again."
        )
    if actual > expected:
        raise IdxFormatError(
            f"{path}: {actual - expected} unexpected bytes after the {expected} bytes the header declares "
            f"(shape {' x '.join(map(str, shape))}): not a valid IDX file."
        )
    array = np.frombuffer(content, dtype=dtype, count=expected // dtype.itemsize, offset=header_size)
    if dtype.byteorder == ">":
        array = array.astype(dtype.newbyteorder("="))
    return array.reshape(shape)


def _candidates(base: str) -> list[str]:
    dotted = base.replace("-idx", ".idx")  # "train-images.idx3-ubyte", as some MNIST copies are named
    return [base, base + ".gz", dotted, dotted + ".gz"]


def _idx_dir(folder: Path) -> Path | None:
    """``folder`` or ``folder/raw`` (torchvision's layout), whichever holds an IDX file of the known names."""
    for candidate in (folder, folder / "raw"):
        if candidate.is_dir() and any(
            (candidate / name).is_file() for pair in IDX_SPLIT_FILES.values() for base in pair
            for name in _candidates(base)
        ):
            return candidate
    return None


def is_idx_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` (or its ``raw/`` subfolder) holds at least one IDX file under a release name."""
    return _idx_dir(Path(path)) is not None


def find_idx_files(path: str | os.PathLike) -> dict[str, tuple[Path, Path]]:
    """``{split: (images file, labels file)}`` for every split whose two files are present in ``path`` (or
    ``path/raw``); splits with neither file are left out.

    Raises:
        FileNotFoundError: no IDX file at all, or a split with one of its two files only (naming the missing
            one and what was expected).
    """
    folder = _idx_dir(Path(path))
    expected = ", ".join(f"{base}[.gz]" for pair in IDX_SPLIT_FILES.values() for base in pair)
    if folder is None:
        raise FileNotFoundError(f"No IDX files in {path} (nor in {Path(path) / 'raw'}); expected {expected}.")
    found: dict[str, tuple[Path, Path]] = {}
    for split, bases in IDX_SPLIT_FILES.items():
        files = [next((folder / n for n in _candidates(base) if (folder / n).is_file()), None) for base in bases]
        if files[0] is None and files[1] is None:
            continue
        for file, base in zip(files, bases):
            if file is None:
                partner = next(f for f in files if f is not None)
                raise FileNotFoundError(
                    f"{folder} has {partner.name} but not {base} (or {base}.gz): the {split} split needs both its "
                    "image and its label file."
                )
        found[split] = (files[0], files[1])
    return found


def _pgm_column(images: np.ndarray) -> pa.ChunkedArray:
    """``(n, rows, cols)`` uint8 -> the Arrow storage of ``datasets.Image`` (``{bytes, path}``), each cell a binary
    PGM file. One vectorised copy per chunk: every record is the same header followed by the pixels. Chunks keep
    Arrow's 32-bit binary offsets below 2 GiB."""
    count, rows, cols = images.shape
    header = np.frombuffer(f"P5\n{cols} {rows}\n255\n".encode("ascii"), dtype=np.uint8)
    record = header.size + rows * cols
    per_chunk = max(1, (2**31 - 1) // record)
    chunks = []
    for start in range(0, max(count, 1), per_chunk):
        block = images[start: start + per_chunk]
        n = block.shape[0]
        buffer = np.empty((n, record), dtype=np.uint8)
        buffer[:, : header.size] = header
        buffer[:, header.size:] = block.reshape(n, rows * cols)
        offsets = np.arange(0, (n + 1) * record, record, dtype=np.int32)
        data = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(buffer)])
        chunks.append(pa.StructArray.from_arrays([data, pa.nulls(n, pa.string())], names=["bytes", "path"]))
    return pa.chunked_array(chunks)


def load_idx_folder(
    path: str | os.PathLike, splits: Sequence[str] | None = None, class_names: Sequence[str] | None = None
) -> datasets.DatasetDict:
    """The IDX data set in ``path`` as ``{"train", "test"}`` (whichever are present), columns ``image``
    (``datasets.Image``, 8-bit grayscale) and ``label`` (``ClassLabel``).

    Args:
        path: a folder with the release files (or with them in ``raw/``); see the module docstring.
        splits: load only these canonical splits (``"train"``, ``"test"``); default: every split present.
        class_names: label names (index = label value), e.g. Fashion-MNIST's; default ``"0"``..``"K-1"`` with K the
            largest label + 1 over the loaded splits.

    Raises:
        FileNotFoundError: no IDX files, a split with only one of its files, or a requested split that is absent.
        IdxFormatError: a truncated file, a wrong magic number (e.g. images and labels swapped), image and label
            counts that differ, or a label outside ``class_names``.
    """
    files = find_idx_files(path)
    wanted = list(splits) if splits is not None else list(files)
    missing = [split for split in wanted if split not in files]
    if missing:
        names = ", ".join(f"{IDX_SPLIT_FILES[s][0]}[.gz] and {IDX_SPLIT_FILES[s][1]}[.gz]" for s in missing
                          if s in IDX_SPLIT_FILES)
        raise FileNotFoundError(
            f"{path} has no {', '.join(missing)} split: expected {names or 'one of ' + ', '.join(IDX_SPLIT_FILES)}; "
            f"found the split(s) {', '.join(files) or 'none'}."
        )
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in wanted:
        images_file, labels_file = files[split]
        images = read_idx(images_file, IMAGES_MAGIC)
        labels = read_idx(labels_file, LABELS_MAGIC)
        if images.shape[0] != labels.shape[0]:
            raise IdxFormatError(
                f"{images_file.name} holds {images.shape[0]} images but {labels_file.name} holds {labels.shape[0]} "
                f"labels (in {images_file.parent}): the two files of the {split} split do not belong together."
            )
        arrays[split] = (images, labels)
    largest = max((int(labels.max()) for _, labels in arrays.values() if labels.size), default=-1)
    if class_names is None:
        class_names = [str(i) for i in range(largest + 1)]
    elif largest >= len(class_names):
        raise IdxFormatError(f"{path}: label {largest} found, but the data set has {len(class_names)} classes "
                             f"({', '.join(class_names)}).")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(class_names))})
    result = {}
    for split, (images, labels) in arrays.items():
        table = pa.table({"image": _pgm_column(images), "label": pa.array(labels.astype(np.int64))})
        table = table.cast(features.arrow_schema)
        result[split] = datasets.Dataset(
            InMemoryTable(table), info=datasets.DatasetInfo(features=features), split=datasets.NamedSplit(split)
        )
        logger.info("Read %d %dx%d images from %s", images.shape[0], images.shape[1], images.shape[2],
                    files[split][0])
    return datasets.DatasetDict(result)
