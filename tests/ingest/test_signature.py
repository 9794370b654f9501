"""The content check of vault/ingest/signature.py on its own: each type's rule, heads that
arrive a byte at a time, the text rules of OBJ and PLY, and that a verified body is unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import sample_file
from vault.config import DEFAULT_CONTENT_TYPES
from vault.errors import ContentMismatch
from vault.ingest.signature import TEXT_HEAD, matches, verified

GIF = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
TEXT = b"Dear colleague, please find the photographs attached.\n"


async def _pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def _collect(body: AsyncIterator[bytes]) -> bytes:
    return b"".join([piece async for piece in body])


@pytest.mark.parametrize("declared", DEFAULT_CONTENT_TYPES)
def test_each_type_accepts_its_own_sample_and_refuses_every_other(declared):
    for actual in DEFAULT_CONTENT_TYPES:
        assert matches(declared, sample_file(actual), complete=True) is (actual == declared), (declared, actual)
    for wrong in (GIF, TEXT, b"", b"\x00" * 200):
        assert matches(declared, wrong, complete=True) is False, (declared, wrong[:8])


@pytest.mark.parametrize("declared", DEFAULT_CONTENT_TYPES)
async def test_a_head_split_into_single_bytes_is_judged_like_a_whole_one(declared):
    data = sample_file(declared, b"x" * 300)
    assert await _collect(await verified(_pieces(data, 1), declared)) == data
    with pytest.raises(ContentMismatch):
        await verified(_pieces(GIF + bytes(300), 1), declared)


def test_a_short_prefix_of_a_signature_is_undecided_until_the_file_ends():
    assert matches("image/jpeg", b"\xff\xd8", complete=False) is None
    assert matches("image/jpeg", b"\xff\xd8", complete=True) is False
    assert matches("application/dicom", bytes(100), complete=False) is None
    assert matches("model/ply", b"pl", complete=False) is None
    assert matches("model/ply", b"ply", complete=True) is False


def test_tiff_accepts_both_byte_orders_and_bigtiff():
    for head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        assert matches("image/tiff", head + bytes(8), complete=True)
    assert not matches("image/tiff", b"II\x00*" + bytes(8), complete=True)


def test_heif_needs_an_ftyp_box_with_a_heif_brand():
    def ftyp(major: bytes, *compatible: bytes) -> bytes:
        body = major + bytes(4) + b"".join(compatible)
        return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body

    assert matches("image/heic", ftyp(b"heic", b"mif1"), complete=True)
    assert matches("image/heic", ftyp(b"msf1"), complete=True)
    assert matches("image/heic", ftyp(b"abcd", b"isom", b"mif1"), complete=True)  # compatible brand
    assert not matches("image/heic", ftyp(b"isom", b"mp41"), complete=True)  # an MP4 video
    assert not matches("image/heic", ftyp(b"avif", b"avif"), complete=True)
    assert not matches("image/heic", b"\x00\x00\x00\x18moovheic" + bytes(16), complete=True)


def test_ply_must_start_with_the_ply_line():
    assert matches("model/ply", b"ply\nformat ascii 1.0\n", complete=True)
    assert matches("model/ply", b"ply\r\nformat ascii 1.0\r\n", complete=True)
    assert not matches("model/ply", b"plyformat ascii 1.0\n", complete=True)
    assert not matches("model/ply", b" ply\n", complete=True)
    assert not matches("model/ply", b"solid cube\n", complete=True)  # an ASCII STL


def test_obj_is_text_whose_first_statement_is_an_obj_keyword():
    assert matches("model/obj", b"# Blender\n\n# more\nmtllib cube.mtl\no Cube\nv 1 1 1\n", complete=True)
    assert matches("model/obj", b"v 1.0 2.0 3.0", complete=True)  # no final newline
    assert matches("model/obj", b"\xef\xbb\xbfv 1 2 3\n", complete=True)  # a byte order mark first
    assert matches("model/obj", "# Überarbeitet\r\nv 0 0 0\r\n".encode(), complete=True)
    assert not matches("model/obj", TEXT, complete=True)
    assert not matches("model/obj", b"# only a comment\n", complete=True)
    assert not matches("model/obj", b"vertex 1 2 3\n", complete=True)  # keyword, not a prefix of one
    assert not matches("model/obj", b"v 1 2 3\n\x00\x01binary", complete=True)
    assert not matches("model/obj", b"# \xff\xfe\nv 1 2 3\n", complete=True)  # not UTF-8
    assert not matches("model/obj", b"solid cube\n", complete=True)


def test_obj_whose_comments_fill_the_inspected_head_is_refused():
    comments = (b"# " + b"x" * 98 + b"\n") * (TEXT_HEAD // 100 + 1)
    assert matches("model/obj", comments + b"v 0 0 0\n", complete=False) is False
    assert matches("model/obj", comments[:1000], complete=False) is None  # could still come


async def test_an_obj_statement_cut_between_pieces_waits_for_the_rest():
    data = b"# header\nv" + b" 0.5" * 10 + b"\nf 1 2 3\n"
    assert await _collect(await verified(_pieces(data, 3), "model/obj")) == data


async def test_a_type_without_a_rule_passes_unchecked():
    data = b"anything at all"
    assert await _collect(await verified(_pieces(data, 4), "image/x-custom")) == data
