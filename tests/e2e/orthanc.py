"""A real Orthanc archive for end-to-end tests: start, fill over REST, stop, restart.

Rule 1: each archive has its own temp dir (config, SQLite index, storage, log)
        and its own free DICOM and HTTP ports; a restart reuses all of them, so
        data and ports survive ``stop()`` / ``start()``.
Rule 2: readiness is observed, never assumed: ``start()`` polls ``GET /system``
        (checking the ports it reports are ours) and fails fast with the log
        tail if Orthanc dies.
Rule 3: Orthanc 1.10.1 cannot bind to one interface: both ports listen on
        0.0.0.0. "RemoteAccessAllowed": false makes the HTTP side refuse
        non-loopback clients; the DICOM side has no equivalent, so with
        ``only_known_calling_aets=False`` any host reaching the port may query.
Rule 4: access control is Orthanc's own, verified against 1.10.1 (see
        ``OrthancArchive`` docstring); the harness never fakes a refusal.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from pydicom import dcmwrite
from pydicom.dataset import Dataset

from tests.e2e.ports import LOOPBACK, POLL_INTERVAL, free_port
from tests.e2e.processes import spawn, stop_process

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
_START_ATTEMPTS = 3  # fresh ports are tried again if another process stole one
_ASSOCIATION_FROM = re.compile(r"Association Received from AET (\S+) on IP")
_REJECTED_FROM = re.compile(r"Rejected association for remote AET (\S+) on IP")


class OrthancError(RuntimeError):
    """Orthanc failed to start, died, or answered a REST call with an error."""


class OrthancArchive:
    """One Orthanc process playing an upstream PACS.

    Access control as verified against Orthanc 1.10.1:

    * ``only_known_calling_aets=False`` (default): every DicomAlwaysAllow* option
      is true, so any calling AE may C-ECHO, C-STORE, C-FIND, C-GET and C-MOVE.
      C-GET then needs no DicomModalities entry; C-MOVE always needs the
      *destination* listed in ``known_modalities`` (else final status 0xC000).
    * ``only_known_calling_aets=True``: every DicomAlwaysAllow* option is false,
      and Orthanc rejects the association itself (A-ASSOCIATE-RJ, permanent,
      "calling AE title not recognized") for a calling AE not listed in
      ``known_modalities``. AE comparison is case-insensitive unless
      ``extra_config={"StrictAetComparison": True}``. Hosts are not checked.
    * Mixed (e.g. ``extra_config={"DicomAlwaysAllowEcho": True}`` with
      ``only_known_calling_aets=True``): a stranger's association is accepted,
      and a C-FIND/C-GET/C-MOVE it is not allowed gets no response at all —
      Orthanc A-ABORTs the association (Orthanc's own 1.10 default config
      behaves this way, since its DicomAlwaysAllowFind/Get/Move are false).
    * ``check_called_aet=True``: associations calling any AE title but ``aet``
      are rejected ("called AE title not recognized").
    * ``limit_find_results=n`` sets LimitFindResults and LimitFindInstances:
      a C-FIND matching more than n returns n pending responses and then a
      final status 0xFE00 (Cancel) — Orthanc's cap is *not* silent.
    """

    def __init__(
        self,
        aet: str = "ORTHANC",
        *,
        known_modalities: Mapping[str, tuple[str, str, int]] | None = None,
        only_known_calling_aets: bool = False,
        limit_find_results: int = 0,
        check_called_aet: bool = False,
        extra_config: Mapping[str, Any] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self._aet = aet
        self.known_modalities = dict(known_modalities or {})
        self.only_known_calling_aets = only_known_calling_aets
        self.limit_find_results = limit_find_results
        self.check_called_aet = check_called_aet
        self.extra_config = dict(extra_config or {})
        self.startup_timeout = startup_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix=f"orthanc-{aet.lower()}-"))
        weakref.finalize(self, shutil.rmtree, self.workdir, ignore_errors=True)
        self.log_path = self.workdir / "orthanc.log"
        self._dicom_port = free_port()
        self._http_port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False
        self._log_offset = 0

    # -- identity ---------------------------------------------------------------
    @property
    def aet(self) -> str:
        return self._aet

    @property
    def dicom_port(self) -> int:
        return self._dicom_port

    @property
    def http_port(self) -> int:
        return self._http_port

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self._http_port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        ports = f"dicom={self._dicom_port} http={self._http_port}"
        return f"<OrthancArchive {self._aet} {ports} {state}>"

    # -- configuration ----------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The Orthanc configuration this archive runs with (written to config.json)."""
        allow_unknown = not self.only_known_calling_aets
        storage = str(self.workdir / "db")
        config: dict[str, Any] = {
            "Name": self._aet,
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "Plugins": [],
            "DicomServerEnabled": True,
            "DicomAet": self._aet,
            "DicomPort": self._dicom_port,
            "DicomCheckCalledAet": self.check_called_aet,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": allow_unknown,
            "DicomAlwaysAllowStore": allow_unknown,
            "DicomAlwaysAllowFind": allow_unknown,
            "DicomAlwaysAllowFindWorklist": allow_unknown,
            "DicomAlwaysAllowGet": allow_unknown,
            "DicomAlwaysAllowMove": allow_unknown,
            "DicomModalities": {
                name: [ae, host, port] for name, (ae, host, port) in self.known_modalities.items()
            },
            "DicomModalitiesInDatabase": False,
            "LimitFindResults": self.limit_find_results,
            "LimitFindInstances": self.limit_find_results,
            "DicomScuTimeout": 5,
            "SynchronousCMove": True,
            "HttpServerEnabled": True,
            "HttpPort": self._http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "OrthancExplorerEnabled": False,
            "HttpCompressionEnabled": False,
            "ExecuteLuaEnabled": False,
            "StableAge": 1,
            "SaveJobs": False,
            "SyncStorageArea": False,
            "StorageCompression": False,
            "UnknownSopClassAccepted": True,
            "DeidentifyLogs": False,
        }
        config.update(self.extra_config)
        return config

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> OrthancArchive:
        """Start Orthanc (no-op if running) and return once REST and DICOM answer."""
        if self.running:
            return self
        attempts = 1 if self._started_once else _START_ATTEMPTS
        for attempt in range(attempts):
            if attempt:  # a port was taken before Orthanc bound it: pick new ones
                self._dicom_port, self._http_port = free_port(), free_port()
            try:
                self._start_once()
            except OrthancError:
                if attempt == attempts - 1 or not self._log_mentions_port_in_use():
                    raise
            else:
                self._started_once = True
                return self
        raise AssertionError("unreachable")

    def _start_once(self) -> None:
        config_path = self.workdir / "config.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._proc = spawn(
            [str(ORTHANC_BINARY), "--verbose-dicom", str(config_path)],
            log_path=self.log_path,
            cwd=self.workdir,
        )
        deadline = time.monotonic() + self.startup_timeout
        # Orthanc binds DICOM before HTTP and exits if DICOM cannot bind, so our own
        # /system answering means both ports are ours (no DICOM probe: it would
        # show up in the log as an association from an empty AE title).
        while not self._system_answers():
            if self._proc.poll() is not None:
                stop_process(self._proc)
                raise OrthancError(f"{self!r} exited at startup:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                stop_process(self._proc, graceful=False)
                raise OrthancError(f"{self!r} not ready after {self.startup_timeout}s")
            time.sleep(POLL_INTERVAL)

    def stop(self, *, graceful: bool = False, timeout: float = 15.0) -> None:
        """Stop Orthanc; ``start()`` brings it back with the same data and ports.

        The default is SIGKILL: instant, like a crash or a pulled cable, and the
        SQLite index keeps every committed instance (verified). ``graceful=True``
        sends SIGTERM, which Orthanc 1.10.1 needs ~3.3 s to honour (fixed internal
        waits of its HTTP, DICOM and jobs loops, whatever the thread counts).
        """
        if self._proc is not None:
            stop_process(self._proc, graceful=graceful, timeout=timeout)
            self._proc = None

    def close(self) -> None:
        """Kill Orthanc and delete its temp dir; the archive cannot be restarted."""
        self.stop(graceful=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    ensure_stopped = close

    def __enter__(self) -> OrthancArchive:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- logs -------------------------------------------------------------------
    def log_text(self, *, since_start: bool = False) -> str:
        """Orthanc's log (all runs, or only since the last ``start()``)."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as log:
            if since_start:
                log.seek(self._log_offset)
            return log.read().decode("utf-8", errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def calling_aets(self) -> list[str]:
        """Calling AE titles of associations Orthanc accepted or examined, in order.

        Read from the --verbose-dicom log ("Association Received from AET X");
        this is how a test proves which AE title reached the archive.
        """
        return _ASSOCIATION_FROM.findall(self.log_text())

    def rejected_calling_aets(self) -> list[str]:
        """Calling AE titles whose association Orthanc rejected, in order."""
        return _REJECTED_FROM.findall(self.log_text())

    def _log_mentions_port_in_use(self) -> bool:
        return "already in use" in self.log_text(since_start=True)

    # -- REST -------------------------------------------------------------------
    def rest(self, method: str, path: str, body: bytes | None = None, timeout: float = 30.0) -> Any:
        """One REST call; JSON answers are decoded, others returned as bytes."""
        request = urllib.request.Request(self.base_url + path, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/dicom")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload: bytes = response.read()
                is_json = "json" in response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            raise OrthancError(f"{method} {path}: HTTP {err.code} {err.read()[:500]!r}") from err
        return json.loads(payload) if is_json and payload else payload

    def _system_answers(self) -> bool:
        """Whether *this* Orthanc answers /system (the ports must be ours, not a squatter's)."""
        try:
            with urllib.request.urlopen(self.base_url + "/system", timeout=1.0) as response:
                system = json.loads(response.read())
        except (OSError, ValueError):
            return False
        ports = (system.get("DicomPort"), system.get("HttpPort"))
        return ports == (self._dicom_port, self._http_port)

    def upload(self, items: Iterable[str | Path | Dataset] | str | Path | Dataset) -> list[str]:
        """POST each Part-10 file (path or Dataset) to /instances; returns Orthanc instance IDs."""
        if isinstance(items, (str, Path, Dataset)):
            items = [items]
        ids: list[str] = []
        for item in items:
            if isinstance(item, Dataset):
                buffer = io.BytesIO()
                dcmwrite(buffer, item, enforce_file_format=True)
                body = buffer.getvalue()
            else:
                body = Path(item).read_bytes()
            answer = self.rest("POST", "/instances", body)
            if answer.get("Status") not in ("Success", "AlreadyStored"):
                raise OrthancError(f"upload of {item!r} answered {answer}")
            ids.append(answer["ID"])
        return ids

    def _main_tags(self, level: str, tag: str) -> set[str]:
        return {r["MainDicomTags"][tag] for r in self.rest("GET", f"/{level}?expand")}

    def patient_ids(self) -> set[str]:
        return self._main_tags("patients", "PatientID")

    def study_uids(self) -> set[str]:
        return self._main_tags("studies", "StudyInstanceUID")

    def series_uids(self) -> set[str]:
        return self._main_tags("series", "SeriesInstanceUID")

    def instance_uids(self) -> set[str]:
        return self._main_tags("instances", "SOPInstanceUID")

    def remote_aets(self) -> dict[str, str]:
        """SOPInstanceUID → calling AE title that stored it ("" for REST uploads)."""
        result: dict[str, str] = {}
        for instance in self.rest("GET", "/instances?expand"):
            metadata = self.rest("GET", f"/instances/{instance['ID']}/metadata?expand")
            result[instance["MainDicomTags"]["SOPInstanceUID"]] = metadata.get("RemoteAET", "")
        return result

    def delete_all(self) -> None:
        """Delete every patient (and so every study, series, instance)."""
        for patient_id in self.rest("GET", "/patients"):
            self.rest("DELETE", f"/patients/{patient_id}")
