"""The stage2 tar writer writes exactly the bytes of tarfile's PAX format."""

from __future__ import annotations

import io
import tarfile

from hypothesis import given, settings
from hypothesis import strategies as st

from amic.compile.tarwriter import TarWriter

NAMES = st.one_of(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=120),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=60))
ENTRY = st.tuples(NAMES, st.integers(0, 0o7777),
                  st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE]),
                  st.binary(max_size=1500), NAMES)


def with_tarfile(entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, mode, kind, data, link in entries:
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
            info.mode, info.type = mode, kind
            if kind == tarfile.SYMTYPE:
                info.linkname = link
                tar.addfile(info)
            elif kind == tarfile.DIRTYPE:
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def with_writer(entries, *, stream: bool, fast: bool = False) -> bytes:
    buf = io.BytesIO()
    tar = TarWriter(buf)
    for name, mode, kind, data, link in entries:
        if kind == tarfile.SYMTYPE:
            tar.add(name, mode, kind=kind, linkname=link)
        elif kind == tarfile.DIRTYPE:
            tar.add(name, mode, kind=kind)
        elif stream:
            tar.add(name, mode, fileobj=io.BytesIO(data), size=len(data))
        elif fast:
            tar.add_data(name, mode, data)
        else:
            tar.add(name, mode, data=data)
    tar.close()
    return buf.getvalue()


@settings(max_examples=150, deadline=None)
@given(st.lists(ENTRY, max_size=8), st.booleans())
def test_same_bytes_as_tarfile_pax(entries, stream):
    assert with_writer(entries, stream=stream) == with_tarfile(entries)


@settings(max_examples=150, deadline=None)
@given(st.lists(ENTRY, max_size=8))
def test_add_data_writes_what_add_writes(entries):
    assert with_writer(entries, stream=False, fast=True) == with_tarfile(entries)


def test_the_cases_that_need_pax_headers():
    long_name = "stage2/services/" + "x" * 120 + "/files/01"
    entries = [("stage2/", 0o755, tarfile.DIRTYPE, b"", ""),
               (long_name, 0o644, tarfile.REGTYPE, b"data", ""),
               ("stage2/caf\u00e9", 0o600, tarfile.REGTYPE, b"", ""),
               ("stage2/link", 0o777, tarfile.SYMTYPE, b"", "t" * 150),
               ("stage2/exact", 0o644, tarfile.REGTYPE, b"y" * 512, "")]
    assert with_writer(entries, stream=False) == with_tarfile(entries)
    names = tarfile.open(fileobj=io.BytesIO(with_writer(entries, stream=True))).getnames()
    assert long_name in names and "stage2/caf\u00e9" in names


def test_a_file_that_shrank_is_an_error():
    tar = TarWriter(io.BytesIO())
    try:
        tar.add("stage2/f", 0o644, fileobj=io.BytesIO(b"abc"), size=10)
    except OSError as exc:
        assert "unexpected end of file" in str(exc)
    else:
        raise AssertionError("a short file was padded silently")


SHAPES = st.lists(st.tuples(st.sampled_from(["", "/a", "/meta", "/x%d", "/é", "/" + "d" * 90]),
                            st.integers(0, 0o7777), st.booleans(), st.binary(max_size=1100)),
                  min_size=1, max_size=7)


@settings(max_examples=150, deadline=None)
@given(NAMES, SHAPES)
def test_add_block_writes_what_tarfile_writes(prefix, block):
    """A block (one %-format of a cached template) is the bytes of its entries one by one,
    with the fallback for what does not fit a ustar header; twice, the second time from the
    template cache."""
    entries = [(prefix + suffix, mode, tarfile.DIRTYPE if is_dir else tarfile.REGTYPE,
                b"" if is_dir else data, "") for suffix, mode, is_dir, data in block]
    shape = tuple((suffix, mode, is_dir) for suffix, mode, is_dir, _ in block)
    datas = tuple(data for _, _, is_dir, data in block if not is_dir)
    for _ in range(2):
        buf = io.BytesIO()
        tar = TarWriter(buf)
        tar.add_block(prefix, shape, datas)
        tar.close()
        assert buf.getvalue() == with_tarfile(entries)
