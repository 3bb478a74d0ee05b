"""proxy.rawdataset.decode gives what pydicom's reader (pynetdicom's dsutils.decode) gives,
element for element, on real-world data sets from pydicom's test data (Rule 1), and hands
what it does not index to pydicom (Rule 2)."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_files
from pydicom.sequence import Sequence
from pynetdicom.dsutils import decode as pydicom_decode
from pynetdicom.dsutils import encode

from proxy import rawdataset
from proxy.fastencode import encode as fast_encode


def _samples() -> list[tuple[str, bytes, bool]]:
    out = []
    for path in sorted(get_testdata_files("*.dcm"))[:120]:
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        for implicit in (True, False):
            try:
                data = encode(ds, implicit, True)
            except Exception:
                continue
            if data:
                out.append((path.rsplit("/", 1)[-1], data, implicit))
    return out


SAMPLES = _samples()


def as_tuples(ds: Dataset) -> list[tuple[int, str | None, int | None, object]]:
    """Raw elements as read; an element pydicom's reader converted (an undefined-length
    sequence) by its VR and value."""
    return [(int(e.tag), e.VR, e.length, e.value) if getattr(e, "is_raw", False)
            else (int(e.tag), e.VR, None, repr(e.value)) for e in ds._dict.values()]


def test_there_are_enough_samples() -> None:
    assert len(SAMPLES) > 100


@pytest.mark.parametrize(("name", "data", "implicit"), SAMPLES,
                         ids=[f"{n}-{'implicit' if i else 'explicit'}" for n, _, i in SAMPLES])
def test_the_same_elements_and_encoding_as_pydicom(name: str, data: bytes,
                                                   implicit: bool) -> None:
    ours = rawdataset.decode(data, implicit)
    theirs = pydicom_decode(BytesIO(data), implicit, True)
    assert as_tuples(ours) == as_tuples(theirs)
    assert ours.original_encoding == theirs.original_encoding
    assert ours.original_character_set == theirs.original_character_set
    assert fast_encode(ours, implicit, True) == fast_encode(theirs, implicit, True) == data


def test_undefined_lengths_and_big_endian_go_to_pydicom() -> None:
    ds = Dataset()
    ds.PatientName = "Doe^John"
    item = Dataset()
    item.CodeValue = "1"
    ds.ProcedureCodeSequence = Sequence([item])
    ds.ProcedureCodeSequence.is_undefined_length = True
    for implicit, little in ((True, True), (False, True), (False, False)):
        data = encode(ds, implicit, little)
        assert data is not None
        ours = rawdataset.decode(data, implicit, little)
        assert ours.ProcedureCodeSequence[0].CodeValue == "1"
        assert str(ours.PatientName) == "Doe^John"


def test_a_truncated_data_set_reads_as_pydicom_reads_it() -> None:
    ds = Dataset()
    ds.PatientID = "12345678"
    data = encode(ds, False, True)
    assert data is not None
    cut = data[:-3]
    assert as_tuples(rawdataset.decode(cut, False)) == as_tuples(
        pydicom_decode(BytesIO(cut), False, True))


@pytest.mark.parametrize(("name", "data", "implicit"), SAMPLES[::7],
                         ids=[f"{n}-{'implicit' if i else 'explicit'}" for n, _, i in SAMPLES[::7]])
def test_a_header_is_what_pydicom_reads_before_pixel_data(name: str, data: bytes,
                                                          implicit: bool) -> None:
    ours = rawdataset.header(data, implicit)
    if ours is None:                   # not flat: the caller asks pydicom (Rule 2)
        return
    theirs = pydicom_decode(BytesIO(data), implicit, True)
    before = [t for t in as_tuples(theirs) if t[0] < 0x7FE00010]
    assert as_tuples(ours) == before


def test_a_header_stops_before_pixel_data_however_much_of_it_is_there() -> None:
    ds = Dataset()
    ds.Modality = "CT"
    ds.PatientID = "P1"
    ds.add_new(0x7FE00010, "OW", b"\0" * 4096)
    data = encode(ds, False, True)
    assert data is not None
    header = rawdataset.header(data[:200], False)     # the pixel data cut short
    assert header is not None and header.Modality == "CT" and "PixelData" not in header
    assert rawdataset.header(data[:18], False) is None  # cut inside PatientID: pydicom's turn


# -- Rule 3: the bytes a data set was read from ----------------------------------------------

def _element_by_element(ds: Dataset, implicit: bool) -> bytes | None:
    """What fastencode writes when it cannot use the kept bytes."""
    plain = Dataset(dict(ds.items()))
    plain.set_original_encoding(*ds.original_encoding, ds.original_character_set)
    return fast_encode(plain, implicit, True)


@pytest.mark.parametrize(("name", "data", "implicit"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_kept_bytes_are_what_element_by_element_writing_gives(name: str, data: bytes,
                                                             implicit: bool) -> None:
    ds = rawdataset.decode(data, implicit)
    if not isinstance(ds, rawdataset.WireDataset) or ds.wire is None:
        return                                   # pydicom's reading, or group lengths
    assert ds.wire == data
    assert fast_encode(ds, implicit, True) == _element_by_element(ds, implicit)


def _match(implicit: bool, **extra: str) -> rawdataset.WireDataset:
    ds = Dataset()
    ds.PatientName = "DOE^JANE"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.RetrieveAETitle = "ORTHANC"
    ds.StudyDate = "20200101"
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    raw = encode(ds, implicit, True)
    assert raw is not None
    decoded = rawdataset.decode(raw, implicit)
    assert isinstance(decoded, rawdataset.WireDataset) and decoded.wire == raw
    return decoded


@pytest.mark.parametrize("change", [
    lambda ds: ds.__setitem__(0x00100010, ds.get_item(0x00100010)),
    lambda ds: ds.__delitem__(0x00080020),
    lambda ds: delattr(ds, "StudyDate"),
    lambda ds: ds.pop(0x00080020),
    lambda ds: setattr(ds, "PatientID", "X"),
    lambda ds: ds.PatientName,                   # converted on access: no longer raw
    lambda ds: ds.clear(),
])
def test_any_change_drops_the_kept_bytes(change: object) -> None:
    ds = _match(False)
    change(ds)                                   # type: ignore[operator]
    assert ds.wire is None


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("title", ["QR_PROXY", "ODD_TITLE", "A", "SIXTEEN_CHARS_AE"])
def test_a_spliced_value_gives_what_setting_it_would(implicit: bool, title: str) -> None:
    from proxy.rawtext import set_text
    spliced, expected = _match(implicit), _match(implicit)
    value = title.encode() + b" " * (len(title) % 2)
    assert rawdataset.splice_text(spliced, 0x00080054, value)
    set_text(expected, 0x00080054, "AE", title)          # the element-by-element way
    assert expected.wire is None
    assert spliced.wire == fast_encode(expected, implicit, True)
    assert fast_encode(spliced, implicit, True) == spliced.wire
    assert not rawdataset.splice_text(spliced, 0x00080054, value)   # one splice only
    assert decode_again(spliced.wire, implicit).RetrieveAETitle == title


def decode_again(data: bytes, implicit: bool) -> Dataset:
    ds: Dataset = pydicom_decode(BytesIO(data), implicit, True)
    return ds


def test_group_lengths_keep_no_bytes() -> None:
    import struct
    date = struct.pack("<HH2sH", 0x0008, 0x0020, b"DA", 8) + b"20200101"
    raw = struct.pack("<HH2sHL", 0x0008, 0x0000, b"UL", 4, len(date)) + date
    decoded = rawdataset.decode(raw, False)
    assert decoded.StudyDate == "20200101"
    assert getattr(decoded, "wire", None) is None      # not written again either


def test_a_data_set_built_by_of_is_the_one_init_builds() -> None:
    """Rule 4: the same state as ``WireDataset(elements)``; no mutable part shared."""
    data = SAMPLES[0][1]
    elements = dict(rawdataset.decode(data, SAMPLES[0][2])._dict)
    made = rawdataset.WireDataset(elements)
    fast = rawdataset.WireDataset.of(elements)
    other = rawdataset.WireDataset.of({})
    assert vars(fast) == vars(made)
    assert fast._dict is elements and len(other) == 0
    for name, value in vars(fast).items():
        if isinstance(value, dict | list | set) and name != "_dict":
            assert value is not vars(other)[name], name       # each has its own
    fast.PatientName = "CHANGED^NAME"                          # works as a Dataset
    assert fast.PatientName == "CHANGED^NAME" and "PatientName" not in other
    assert fast.wire is None


@pytest.mark.parametrize("implicit", [True, False])
def test_an_empty_element_is_read_and_written_again_after_a_change(implicit: bool) -> None:
    """An empty value read from Implicit VR has no bytes at all: pydicom converts it on
    ``get_item`` (a cap-recovery sub-query adds a key to such a query and encodes it)."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientName = ""
    query.StudyInstanceUID = "1.2.3"
    ds = rawdataset.decode(encode(query, implicit, True), implicit)
    assert ds.get_item(0x00100010) is not None
    ds.StudyDate = ""                                   # drops the kept bytes
    query.StudyDate = ""
    assert fast_encode(ds, implicit, True) == encode(query, implicit, True)
