"""The proxy's own conversion (proxy.retrieve.transcode), on pydicom's bundled encodings."""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from proxy.retrieve.reception import Buffered, file_meta
from proxy.retrieve.transcode import as_accepted, convert, target_for

DECODABLE = ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jpeg_gdcm.dcm", "JPEG2000.dcm",
             "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "SC_rgb_rle.dcm"]


def buffered(name: str) -> Buffered:
    """A bundled file as the retrieve buffer holds it: the data set as received."""
    raw = Path(get_testdata_file(name)).read_bytes()
    ds = dcmread(BytesIO(raw), stop_before_pixels=True)
    # Part 10: preamble and "DICM" (132 bytes), then (0002,0000) UL in explicit VR
    # (12 bytes) whose value is the length of the rest of group 0002.
    offset = 132 + 12 + struct.unpack("<I", raw[140:144])[0]
    return Buffered(None, str(ds.SOPInstanceUID), str(ds.SOPClassUID),
                    str(ds.file_meta.TransferSyntaxUID), len(raw) - offset, "pacs",
                    data=bytearray(raw[offset:]))


@pytest.mark.parametrize("name", DECODABLE)
def test_a_compressed_instance_becomes_explicit_little_endian_with_the_same_pixels(
        name: str) -> None:
    item = buffered(name)
    result = convert(item, [ExplicitVRLittleEndian])
    assert result.transfer_syntax == ExplicitVRLittleEndian, result.reason
    meta = file_meta(item.sop_class_uid, item.sop_instance_uid, ExplicitVRLittleEndian)
    got = dcmread(BytesIO(meta + result.data))
    original = dcmread(get_testdata_file(name))
    assert got.SOPInstanceUID == original.SOPInstanceUID        # identity kept (Rule 2)
    assert got.PatientName == original.PatientName
    assert (got.pixel_array == original.pixel_array).all()


def test_implicit_is_the_target_when_that_is_all_the_receiver_takes() -> None:
    result = convert(buffered("MR_small_RLE.dcm"), [JPEGBaseline8Bit, ImplicitVRLittleEndian])
    assert result.transfer_syntax == ImplicitVRLittleEndian


def test_nothing_is_compressed_by_the_proxy() -> None:
    assert target_for([JPEGBaseline8Bit]) is None
    result = convert(buffered("MR_small_RLE.dcm"), [JPEGBaseline8Bit])
    assert result.transfer_syntax is None and "does not convert to" in result.reason


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_an_undecodable_stream_is_a_reason_not_an_exception() -> None:
    item = buffered("MR_small_RLE.dcm")
    broken = Buffered(None, item.sop_instance_uid, item.sop_class_uid, item.transfer_syntax,
                      item.size, "pacs", data=bytearray(bytes(item.data or b"")[:-400]))
    result = convert(broken, [ExplicitVRLittleEndian])
    assert result.transfer_syntax is None and "failed" in result.reason


def test_a_receiver_gets_its_own_syntax_else_a_re_encoding_else_a_transcoding() -> None:
    """Rule 4: the one choice a C-GET workstation, a Move Destination and WADO-RS share."""
    explicit = buffered("CT_small.dcm")
    assert explicit.transfer_syntax == ExplicitVRLittleEndian
    same = as_accepted(explicit, [JPEGBaseline8Bit, ExplicitVRLittleEndian])
    assert (same.transfer_syntax, same.data, same.transcoded) == \
        (ExplicitVRLittleEndian, None, False)                 # its own bytes
    implicit = as_accepted(explicit, [ImplicitVRLittleEndian])
    assert (implicit.transfer_syntax, implicit.transcoded) == (ImplicitVRLittleEndian, False)
    assert implicit.data is not None
    assert dcmread(BytesIO(implicit.data), force=True).PixelData == \
        dcmread(get_testdata_file("CT_small.dcm")).PixelData
    decoded = as_accepted(buffered("MR_small_RLE.dcm"), [ImplicitVRLittleEndian])
    assert (decoded.transfer_syntax, decoded.transcoded) == (ImplicitVRLittleEndian, True)
    refused = as_accepted(explicit, [JPEGBaseline8Bit])         # never compressed
    assert refused.transfer_syntax is None and "does not convert to" in refused.reason
