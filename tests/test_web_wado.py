"""``proxy.web.wado``: Accept, multipart framing, frame lists and frame cutting (pure)."""

from __future__ import annotations

import email.parser
import email.policy

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from proxy.web import wado

ELE = "1.2.840.10008.1.2.1"


@pytest.mark.parametrize(("accept", "expected"), [
    ("", None),
    ("*/*", None),
    ('multipart/related; type="application/dicom"', None),
    ('multipart/related; type="application/dicom"; transfer-syntax=*', None),
    (f'multipart/related; type="application/dicom"; transfer-syntax={ELE}', (ELE,)),
    (f'image/png, multipart/related; type=application/dicom; transfer-syntax="{ELE}"', (ELE,)),
    (f'multipart/related; type="application/dicom"; transfer-syntax={ELE}; q=0.5, '
     'multipart/related; type="application/dicom"; transfer-syntax=*', None),   # q decides
])
def test_the_transfer_syntax_a_client_asks_for(accept: str,
                                               expected: tuple[str, ...] | None) -> None:
    assert wado.instance_syntaxes(accept) == expected


@pytest.mark.parametrize("accept", [
    "image/png", "application/dicom+json",
    'multipart/related; type="application/dicom"; transfer-syntax=1.2.3.4',   # not a syntax
    'multipart/related; type="application/dicom"; q=0',
])
def test_what_cannot_be_served_is_406(accept: str) -> None:
    with pytest.raises(wado.NotAcceptable):
        wado.instance_syntaxes(accept)


def test_metadata_and_frame_media_types() -> None:
    wado.metadata_acceptable("application/dicom+json")
    wado.metadata_acceptable("")
    with pytest.raises(wado.NotAcceptable):
        wado.metadata_acceptable("multipart/related")
    assert wado.frame_media_type("1.2.840.10008.1.2") == wado.OCTET
    assert wado.frame_media_type("1.2.840.10008.1.2.5") == "image/x-dicom-rle"
    assert wado.frame_media_type("1.2.840.10008.1.2.4.50") == "image/jpeg"
    wado.frames_acceptable('multipart/related; type="image/jpeg"', "image/jpeg")
    with pytest.raises(wado.NotAcceptable):
        wado.frames_acceptable('multipart/related; type="application/octet-stream"',
                               "image/jpeg")


def test_a_multipart_answer_parses_back_into_its_parts() -> None:
    framing = wado.Multipart.new(wado.DICOM)
    bodies = [b"first\r\n--not-the-boundary", b"\x00\x01second"]
    message = b"".join(framing.head(f"{wado.DICOM}; transfer-syntax={ELE}") + body + b"\r\n"
                       for body in bodies) + framing.end()
    parsed = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {framing.content_type}\r\n\r\n".encode() + message)
    parts = [p.get_payload(decode=True) for p in parsed.iter_parts()]
    assert parts == bodies
    assert framing.boundary != wado.Multipart.new(wado.DICOM).boundary


@pytest.mark.parametrize(("text", "numbers"), [("1", [1]), ("1,3, 5", [1, 3, 5])])
def test_frame_lists(text: str, numbers: list[int]) -> None:
    assert wado.frame_numbers(text) == numbers


@pytest.mark.parametrize("text", ["0", "1,,2", "a", "-1", ""])
def test_bad_frame_lists(text: str) -> None:
    with pytest.raises(wado.BadFrames):
        wado.frame_numbers(text)


def test_native_and_encapsulated_frames_are_cut_as_stored() -> None:
    native = dcmread(get_testdata_file("rtdose.dcm"))
    size = len(native.PixelData) // 15
    assert list(wado.frames(native, "1.2.840.10008.1.2", [2, 15])) == [
        native.PixelData[size:2 * size], native.PixelData[14 * size:]]
    rle = dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    stored = list(generate_frames(rle.PixelData, number_of_frames=2))
    assert list(wado.frames(rle, "1.2.840.10008.1.2.5", [2, 1])) == [stored[1], stored[0]]
    with pytest.raises(wado.NoSuchFrame):
        list(wado.frames(rle, "1.2.840.10008.1.2.5", [3]))


@pytest.mark.parametrize(("header", "span"), [
    ("bytes=0-9", (0, 9)), ("bytes=10-", (10, 99)), ("bytes=-5", (95, 99)),
    ("bytes=90-200", (90, 99)),                     # past the end: up to the end
    ("bytes=0-1,5-6", None), ("items=0-1", None), ("", None), ("bytes=a-b", None),
])
def test_byte_ranges(header: str, span: tuple[int, int] | None) -> None:
    assert wado.byte_range(header, 100) == span


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=5-2", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(wado.RangeNotSatisfiable):
        wado.byte_range(header, 100)


def test_the_metadata_cache_keeps_the_least_recently_used_within_its_bytes() -> None:
    from proxy.web.wado_rs import MetadataCache
    cache = MetadataCache(max_bytes=30)
    cache.put(("R", "s1"), b"[" + b"1" * 18 + b"]", 2)   # 20 bytes
    cache.put(("R", "s2"), b"[22222]", 1)                  # 7 bytes
    assert cache.get(("R", "s1")) == (b"[" + b"1" * 18 + b"]", 2)   # now the most recent
    cache.put(("R", "s3"), b"[33333]", 1)                  # 34 bytes > 30: s2 goes
    assert cache.get(("R", "s2")) is None and cache.size == 27
    assert cache.get(("R", "s1")) is not None and cache.get(("R", "s3")) is not None
    cache.put(("R", "s3"), b"[3]", 1)                      # replaced, not counted twice
    assert cache.size == 23
    cache.put(("R", "big"), b"x" * 31, 9)                 # larger than the bound: not kept
    assert cache.get(("R", "big")) is None and cache.size == 23
    off = MetadataCache(max_bytes=0)
    off.put(("R", "s1"), b"[1]", 1)
    assert off.get(("R", "s1")) is None and off.size == 0


@pytest.mark.parametrize(("syntax", "bits", "vr"), [
    ("1.2.840.10008.1.2.1", 16, "OW"), ("1.2.840.10008.1.2.1", 8, "OB"),
    ("1.2.840.10008.1.2", 8, "OW"), ("1.2.840.10008.1.2.4.50", 8, "OB"),
    ("1.2.840.10008.1.2.5", 16, "OB")])
def test_the_metadata_pixel_data_vr_is_the_instances(syntax: str, bits: int, vr: str) -> None:
    from pydicom import Dataset

    from proxy.web.wado_rs import _pixel_vr
    ds = Dataset()
    ds.BitsAllocated = bits
    assert _pixel_vr(ds, syntax) == vr
