"""Raw pass-through of C-STORE data sets: received straight into a file, sent from a file.

pynetdicom can write a received C-STORE data set to a file without decoding it
(``_config.STORE_RECV_CHUNKED_DATASET``) and send one from a file as stored
(``_config.STORE_SEND_CHUNKED_DATASET``): bounded memory, and the bytes an
archive receives are the bytes the modality sent. But both switches are
process-wide, the received file goes to the system temp dir, and it is deleted
only on the acceptor path — the C-GET requester path (retrieve) never deletes
it. This module turns them on exactly where the store-and-forward path wants
them, and nowhere else.

Rule 1: a data set is received into a file only on an association accepted by
        a registered listener (``receive_into``) whose session is not marked
        ``inbound`` (retrieve's C-MOVE inbound path keeps pynetdicom's default,
        in-memory behaviour); every other association is left as pynetdicom
        configures it.
Rule 2: that file is created in the spool's temp dir — the same filesystem as
        the spool, so the handler can ``os.replace`` it into place — and every
        file created is remembered per association; when the connection
        closes, whatever is left (an aborted transfer, a refused instance) is
        deleted (``forget``), so no temp file outlives its association.
Rule 3: a data set is sent from its file without decoding only inside
        ``sending_raw()`` on the calling thread; elsewhere pynetdicom decodes
        files as usual.
Rule 4: the patch is attribute swaps on pynetdicom 3.0 modules
        (``dimse_messages._config`` / ``NamedTemporaryFile`` / ``create_file_meta``,
        ``association._config``), made once, and reads through to the real
        ``_config`` for everything else.
Rule 5: a file received under Rule 1 says in its File Meta Information who sent it to
        whom: Sending Application Entity Title (0002,0017) = the association's calling
        AE title, Receiving Application Entity Title (0002,0018) = its called AE title
        (PS3.10 7.1), so the spool can forward it on the sender's behalf
        (``routing.forward_calling_ae``), also after a restart.
"""

from __future__ import annotations

import os
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydicom.dataset import FileMetaDataset
from pynetdicom import _config, association, dimse_messages, dsutils

_local = threading.local()
_lock = threading.Lock()
# listener AE → (temp dir, "may this association receive into a file?")
_receivers: weakref.WeakKeyDictionary[Any, tuple[Path, Callable[[Any], bool]]] = (
    weakref.WeakKeyDictionary())
# association → temp files created for it (Rule 2)
_created: weakref.WeakKeyDictionary[Any, set[Path]] = weakref.WeakKeyDictionary()
_installed = False


class _Switches:
    """Stands in for ``pynetdicom._config`` in the two modules that read the switches."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_config, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(_config, name, value)

    @property
    def STORE_RECV_CHUNKED_DATASET(self) -> bool:
        return bool(_config.STORE_RECV_CHUNKED_DATASET) or _receiving_dir() is not None

    @property
    def STORE_SEND_CHUNKED_DATASET(self) -> bool:
        return bool(_config.STORE_SEND_CHUNKED_DATASET) or bool(getattr(_local, "raw", False))


def _current_association() -> Any:
    # pynetdicom decodes P-DATA in the association's DUL thread, which knows its association.
    return getattr(threading.current_thread(), "assoc", None)


def _receiving_dir() -> Path | None:
    assoc = _current_association()
    if assoc is None or not getattr(assoc, "is_acceptor", False):
        return None
    rule = _receivers.get(assoc.ae)
    if rule is None:
        return None
    directory, wanted = rule
    return directory if wanted(assoc) else None


def _temporary_file(*args: Any, **kwargs: Any) -> Any:
    directory = _receiving_dir()
    if directory is not None:
        kwargs["dir"] = directory
        kwargs.setdefault("prefix", "rx-")
    handle = tempfile.NamedTemporaryFile(*args, **kwargs)  # noqa: SIM115 - pynetdicom closes it
    assoc = _current_association()
    if directory is not None and assoc is not None:
        with _lock:
            _created.setdefault(assoc, set()).add(Path(handle.name))
    return handle


def _file_meta(**kwargs: Any) -> FileMetaDataset:
    """pynetdicom's File Meta Information, with the association's AE titles (Rule 5)."""
    meta: FileMetaDataset = dsutils.create_file_meta(**kwargs)
    if _receiving_dir() is not None:
        sending, receiving = _titles(_current_association())
        if sending:
            meta.SendingApplicationEntityTitle = sending
        if receiving:
            meta.ReceivingApplicationEntityTitle = receiving
    return meta


def _titles(assoc: Any) -> tuple[str, str]:
    """(calling AE title, called AE title) a workstation's association was requested with."""
    primitive = assoc.requestor.primitive
    return (str(getattr(primitive, "calling_ae_title", "") or "").strip(),
            str(getattr(primitive, "called_ae_title", "") or "").strip())


def install() -> None:
    """Swap the switches into pynetdicom (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        switches = _Switches()
        dimse_messages._config = switches
        dimse_messages.NamedTemporaryFile = _temporary_file
        dimse_messages.create_file_meta = _file_meta
        association._config = switches
        _installed = True


def receive_into(ae: Any, directory: Path, wanted: Callable[[Any], bool]) -> None:
    """Receive C-STOREs on associations accepted by ``ae`` into files in ``directory``."""
    install()
    directory.mkdir(parents=True, exist_ok=True)
    with _lock:
        _receivers[ae] = (directory, wanted)


def stop_receiving(ae: Any) -> None:
    with _lock:
        _receivers.pop(ae, None)


def forget(assoc: Any) -> int:
    """Delete the temp files still left from ``assoc``; return how many there were."""
    with _lock:
        paths = _created.pop(assoc, set())
    removed = 0
    for path in paths:
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            pass            # moved into the spool, or deleted by pynetdicom: the normal case
        except OSError:
            pass            # the next start clears the temp dir
    return removed


@contextmanager
def sending_raw(enabled: bool = True) -> Iterator[None]:
    """Within this block, ``send_c_store(path)`` on this thread sends the file's bytes as is."""
    previous = getattr(_local, "raw", False)
    _local.raw = enabled
    try:
        yield
    finally:
        _local.raw = previous
