"""proxy.store.spool.data_offset: where the data set starts in a received or spooled file."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.filereader import _read_file_meta_info, read_preamble

from proxy.store.spool import data_offset


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm"])
def test_the_offset_is_where_pydicom_finds_the_data_set(name: str) -> None:
    data = Path(get_testdata_file(name)).read_bytes()  # type: ignore[arg-type]
    stream = io.BytesIO(data)
    read_preamble(stream, False)
    _read_file_meta_info(stream)
    assert data_offset(data[:1024]) == stream.tell()


def test_a_bare_data_set_starts_at_zero_and_a_broken_meta_is_an_error() -> None:
    assert data_offset(b"\x08\x00\x05\x00CS\x00\x00") == 0
    broken = b"\x00" * 128 + b"DICM" + b"\x02\x00\x01\x00OB\x00\x00" + b"\x00" * 8
    with pytest.raises(ValueError):
        data_offset(broken)
