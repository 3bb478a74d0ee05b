"""DCMTK 3.6.7 command-line tools playing the workstation, run by absolute path.

pynetdicom installs its own ``findscu``/``getscu``/... console scripts that
shadow DCMTK's in PATH, so every tool is called as ``/usr/bin/<tool>``.

Rule 1: every run has a hard wall-clock timeout (``subprocess.run(timeout=)``)
        plus DCMTK's own -to/-ta/-td network timeouts, so no test can hang.
Rule 2: statuses are parsed from the ``-d`` (debug) log, which dumps each DIMSE
        message as ``D: Message Type : C-FIND RSP`` … ``D: DIMSE Status : 0xff00: …``;
        only messages of the operation's own RSP type count (getscu also logs the
        C-STORE RSPs it sends). Sub-operation counts come from the same blocks
        (``D: Remaining Suboperations : 3`` — ``none`` in a final response).
        echoscu does not dump DIMSE messages: its status is read from
        ``I: Received Echo Response (Success)``.
Rule 3: association rejection is ``E:/F: Association Rejected:`` followed by
        ``Result: …``, ``Reason: …``; connection failures are
        ``F: Association Request Failed: … Connection refused``; a peer A-ABORT
        is ``I: Peer Aborted Association`` (findscu still exits 0 then!).
Rule 4: exit codes are reported, not judged: DCMTK exits non-zero on a refused
        association (echoscu 1, findscu 2) and on a failed C-MOVE (movescu 69),
        but 0 on a C-FIND ending in Cancel; assert on ``final_status``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.e2e.ports import LOOPBACK, POLL_INTERVAL, free_port, wait_for_port
from tests.e2e.processes import spawn, stop_process

DCMTK_BIN = Path("/usr/bin")
DEFAULT_TIMEOUT = 60.0
SUCCESS = 0x0000  # PS3.7 C.1.1
_MODELS = {"study": "-S", "patient": "-P", "psonly": "-O", "worklist": "-W"}
_MESSAGE_TYPE = re.compile(r"^D: Message Type\s*: (.+?)\s*$")
_DIMSE_STATUS = re.compile(r"^D: DIMSE Status\s*: 0x([0-9a-fA-F]{4})")
_SUBOPS = re.compile(r"^D: (Remaining|Completed|Failed|Warning) Suboperations\s*: (\S+)")
_REJECT_REASON = re.compile(r"^[EF]: Reason: (.+)$")
_CALLING = re.compile(r"^[ID]: Calling Application Name:\s*(\S*)")
_CALLED = re.compile(r"^[ID]: Called Application Name:\s*(\S*)")
_RESPONDING = re.compile(r"^[ID]: Responding Application Name:\s*(\S*)")


def tool(name: str) -> str:
    """Absolute path of a DCMTK tool (never the pynetdicom script of the same name)."""
    return str(DCMTK_BIN / name)


@dataclass
class DcmtkResult:
    """What one DCMTK run produced; ``statuses`` are the operation's RSP statuses in order."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    statuses: list[int] = field(default_factory=list)
    association_rejected: bool = False
    rejection_reason: str | None = None
    connection_failed: bool = False
    association_aborted: bool = False

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def final_status(self) -> int | None:
        """The status of the last response (``None`` if none arrived)."""
        return self.statuses[-1] if self.statuses else None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.final_status == SUCCESS

    def read_log(self, rsp_type: str | None) -> None:
        """Fill the parsed fields from the ``-d`` log, counting ``rsp_type`` messages only."""
        current_type = ""
        for line in self.output.splitlines():
            if match := _MESSAGE_TYPE.match(line):
                current_type = match.group(1)
            elif current_type == rsp_type and (match := _DIMSE_STATUS.match(line)):
                self.statuses.append(int(match.group(1), 16))
            elif current_type == rsp_type and (match := _SUBOPS.match(line)):
                value = match.group(2)
                self.set_count(match.group(1).lower(), int(value) if value.isdigit() else None)
            elif match := _REJECT_REASON.match(line):
                self.rejection_reason = match.group(1).strip()
        self.association_rejected = "Association Rejected" in self.output
        self.connection_failed = "Association Request Failed" in self.output
        self.association_aborted = "Peer Aborted Association" in self.output

    def set_count(self, kind: str, value: int | None) -> None:
        """Sub-operation counts matter to retrieves only."""


@dataclass
class FindResult(DcmtkResult):
    identifiers: list[Dataset] = field(default_factory=list)
    files: list[bytes] = field(default_factory=list)   # each response file, as written

    def values(self, keyword: str) -> list[str]:
        """The value of ``keyword`` in each identifier, as str ("" when absent)."""
        return [str(ds.get(keyword, "")) for ds in self.identifiers]


@dataclass
class RetrieveResult(DcmtkResult):
    """A C-GET or C-MOVE; counts are from the last response (None if absent or "none")."""

    remaining: int | None = None
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None
    files: list[Path] = field(default_factory=list)  # getscu with output_dir only
    datasets: list[Dataset] = field(default_factory=list)  # getscu only

    def set_count(self, kind: str, value: int | None) -> None:
        setattr(self, kind, value)


R = TypeVar("R", bound=DcmtkResult)


def _run(
    result_type: type[R], name: str, args: Sequence[str], timeout: float, rsp_type: str | None
) -> R:
    """Run a tool with ``-d``; raises ``subprocess.TimeoutExpired`` after ``timeout`` s."""
    argv = [tool(name), "-d", *args]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    result = result_type(argv, proc.returncode, proc.stdout, proc.stderr)
    result.read_log(rsp_type)
    return result


def _network_args(called_ae: str, calling_ae: str, timeout: float) -> list[str]:
    seconds = str(max(1, int(timeout)))
    return ["-aet", calling_ae, "-aec", called_ae, "-to", "10", "-ta", "10", "-td", seconds]


def _query_args(model: str, level: str | None, keys: Sequence[str]) -> list[str]:
    """``level=None``: no Query/Retrieve Level is added (an identifier without one)."""
    if model not in _MODELS:
        raise ValueError(f"model must be one of {sorted(_MODELS)}, not {model!r}")
    args = [_MODELS[model]]
    if (model != "worklist" and level is not None
            and not any(k.startswith("QueryRetrieveLevel") for k in keys)):
        args += ["-k", f"QueryRetrieveLevel={level}"]
    for key in keys:
        args += ["-k", key]
    return args


def echoscu(
    host: str, port: int, called_ae: str, calling_ae: str, *, timeout: float = 30.0,
    tls: Sequence[str] = (),
) -> DcmtkResult:
    """C-ECHO; ``final_status`` is 0x0000 when ``Received Echo Response (Success)`` was logged.
    ``tls``: DCMTK's TLS options, e.g. ``["+tls", KEY, CERT, "+cf", CA]``."""
    args = [*_network_args(called_ae, calling_ae, timeout), *tls, host, str(port)]
    result = _run(DcmtkResult, "echoscu", args, timeout, rsp_type=None)
    if "Received Echo Response (Success)" in result.output:
        result.statuses.append(SUCCESS)
    return result


def findscu(
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    *,
    model: str = "study",
    level: str | None = "STUDY",
    keys: Sequence[str] = (),
    cancel_after: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    tls: Sequence[str] = (),
) -> FindResult:
    """C-FIND; every pending identifier is returned as a Dataset, in arrival order.

    ``keys`` use findscu's ``-k`` syntax: ``"StudyDate=20200101-20200110"`` is a
    matching key, a bare ``"StudyInstanceUID"`` a return key.
    ``QueryRetrieveLevel=<level>`` is added unless ``keys`` sets it. Responses are
    extracted with ``-X -od <tmpdir>`` (files ``rsp0001.dcm`` …) and read back.
    ``cancel_after=n`` sends C-CANCEL after n responses (``--cancel n``).
    """
    with tempfile.TemporaryDirectory(prefix="findscu-") as out:
        args = [*_network_args(called_ae, calling_ae, timeout), *_query_args(model, level, keys)]
        args += ["-X", "-od", out, *tls]
        if cancel_after is not None:
            args += ["--cancel", str(cancel_after)]
        result = _run(FindResult, "findscu", [*args, host, str(port)], timeout, "C-FIND RSP")
        paths = sorted(Path(out).glob("rsp*.dcm"))
        result.identifiers = [dcmread(path) for path in paths]
        result.files = [path.read_bytes() for path in paths]
    return result


def getscu(
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    *,
    model: str = "study",
    level: str | None = "STUDY",
    keys: Sequence[str] = (),
    output_dir: str | Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    extra_args: Sequence[str] = (),
) -> RetrieveResult:
    """C-GET; received instances are written to ``output_dir`` (``<MOD>.<SOPInstanceUID>``).

    ``datasets`` always holds the instances received by this call; ``files`` their
    paths when ``output_dir`` was given (otherwise a temp dir is used and removed).
    """
    with tempfile.TemporaryDirectory(prefix="getscu-") as tmp:
        out = Path(output_dir) if output_dir is not None else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        before = set(out.iterdir())
        args = [*_network_args(called_ae, calling_ae, timeout), *_query_args(model, level, keys)]
        args += [*extra_args, "-od", str(out), host, str(port)]
        result = _run(RetrieveResult, "getscu", args, timeout, "C-GET RSP")
        files = sorted(set(out.iterdir()) - before)
        result.datasets = [dcmread(path) for path in files]
        result.files = files if output_dir is not None else []
    return result


def movescu(
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    *,
    move_destination: str,
    model: str = "study",
    level: str | None = "STUDY",
    keys: Sequence[str] = (),
    cancel_after: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> RetrieveResult:
    """C-MOVE to ``move_destination`` (an AE the called peer must know); no local listener.

    Pair it with a ``StoreSCP`` registered at the peer to see what arrived.
    """
    args = [*_network_args(called_ae, calling_ae, timeout), *_query_args(model, level, keys)]
    args += ["-aem", move_destination]
    if cancel_after is not None:
        args += ["--cancel", str(cancel_after)]
    return _run(RetrieveResult, "movescu", [*args, host, str(port)], timeout, "C-MOVE RSP")


def storescu(
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    paths: Iterable[str | Path],
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> DcmtkResult:
    """C-STORE each file over one association; ``statuses`` has one entry per file sent."""
    files = [str(p) for p in paths]
    if not files:
        raise ValueError("storescu needs at least one file")
    args = [*_network_args(called_ae, calling_ae, timeout), host, str(port), *files]
    return _run(DcmtkResult, "storescu", args, timeout, "C-STORE RSP")


class StoreSCP:
    """``/usr/bin/storescp`` on a free 127.0.0.1 port, storing into ``output_dir``.

    Accepts every transfer syntax it knows (``+xa``) and unknown SOP classes
    (``--promiscuous``); ``extra_args`` adds faults such as ``--refuse``,
    ``--abort-after`` or ``--sleep-during 5``. ``default_options=True`` runs it as a
    site would out of the box: uncompressed transfer syntaxes only, known SOP classes
    only. Files are named ``<MOD>.<SOPInstanceUID>``.
    """

    def __init__(
        self,
        aet: str = "STORESCP",
        output_dir: str | Path | None = None,
        *,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        default_options: bool = False,
    ) -> None:
        self.aet = aet
        self.default_options = default_options
        self.port = port or free_port()
        self.host = LOOPBACK
        self._own_dir = output_dir is None
        self.output_dir = Path(output_dir or tempfile.mkdtemp(prefix=f"storescp-{aet.lower()}-"))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        fd, log_name = tempfile.mkstemp(prefix="storescp-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_name)
        weakref.finalize(self, self.log_path.unlink, missing_ok=True)
        if self._own_dir:
            weakref.finalize(self, shutil.rmtree, self.output_dir, ignore_errors=True)
        self.extra_args = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> StoreSCP:
        argv = [tool("storescp"), "-v", "+v", "-aet", self.aet, "-od", str(self.output_dir)]
        if not self.default_options:
            argv += ["+xa", "--promiscuous"]
        argv += ["-ta", "10", *self.extra_args, str(self.port)]
        proc = self._proc = spawn(argv, log_path=self.log_path)
        wait_for_port(self.port, timeout, alive=lambda: proc.poll() is None)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, timeout=5.0)
            self._proc = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.output_dir, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> StoreSCP:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def modality(self) -> tuple[str, str, int]:
        """``(AET, host, port)``, ready for ``OrthancArchive(known_modalities=...)``."""
        return (self.aet, self.host, self.port)

    def received_files(self) -> list[Path]:
        return sorted(p for p in self.output_dir.iterdir() if p.is_file())

    def received_datasets(self) -> list[Dataset]:
        return [dcmread(p) for p in self.received_files()]

    def received_sop_uids(self) -> set[str]:
        return {str(ds.SOPInstanceUID) for ds in self.received_datasets()}

    def wait_for_files(self, count: int, timeout: float = 30.0) -> list[Path]:
        """Poll until at least ``count`` files arrived (for asynchronous senders)."""
        deadline = time.monotonic() + timeout
        while len(files := self.received_files()) < count:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.aet}: {len(files)} of {count} files after {timeout}s")
            time.sleep(POLL_INTERVAL)
        return files

    def associations(self) -> list[tuple[str, str]]:
        """``(calling AE, called AE)`` of each association request received, in order."""
        found: list[tuple[str, str]] = []
        calling = called = ""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        for line in text.splitlines():
            if match := _CALLING.match(line):
                calling = match.group(1)
            elif match := _CALLED.match(line):
                called = match.group(1)
            elif (match := _RESPONDING.match(line)) and not match.group(1):
                # An empty responder marks the A-ASSOCIATE-RQ dump; an empty caller
                # is a bare TCP probe (wait_for_port), not an association.
                if calling:
                    found.append((calling, called))
                calling = called = ""
        return found
