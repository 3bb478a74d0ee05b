"""The ``dicom-proxy`` command: run, check, doctor, demo.

Exit statuses: 0 fine; 1 a runtime failure (port in use, …); 2 an invalid rules
file — one line on stderr naming the key path, and nothing started.
"""

from __future__ import annotations

import argparse
import signal
import ssl
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from proxy.config import Config, ConfigError, load

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicom-proxy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run the proxy in the foreground"),
                       ("check", "validate the rules file and exit")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--rules", default="rules.toml", help="rules file (default ./rules.toml)")
    doctor = sub.add_parser("doctor", help="check every archive and destination; one line "
                                           "per finding, exit 1 when something is broken")
    doctor.add_argument("--rules", default="rules.toml", help="rules file (default ./rules.toml)")
    doctor.add_argument("--timeout", type=float, default=10.0,
                        help="seconds each check may wait (default 10)")
    demo = sub.add_parser("demo", help="sandbox archives + the proxy on loopback, with "
                                       "commands to paste")
    demo.add_argument("--port", type=int, default=11112, help="proxy port (0 = any free)")
    demo.add_argument("--metrics-port", type=int, default=9110)
    demo.add_argument("--studies", type=int, default=6, help="synthetic studies per archive")
    demo.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    demo.add_argument("--exit-after-ready", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.command == "check":
        return _check(args.rules)
    if args.command == "run":
        return _run(args.rules)
    if args.command == "doctor":
        return _doctor(args.rules, args.timeout)
    from proxy.tools.demo import run_demo
    return run_demo(port=args.port, metrics_port=args.metrics_port, studies=args.studies,
                    workdir=args.dir, exit_after_ready=args.exit_after_ready)


def _load(path: str) -> Config | None:
    try:
        return load(path)
    except ConfigError as exc:
        print(f"dicom-proxy: {path}: {exc}", file=sys.stderr)
        return None


def _check(path: str) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    print(f"{path}: valid ({len(config.archives)} archives, {len(config.routes)} routes, "
          f"{len(config.destinations)} destinations)")
    return EXIT_OK


def _doctor(path: str, timeout: float) -> int:
    """Exit 0: nothing broken (warnings allowed); 1: something broken; 2: invalid rules."""
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    from proxy.tools.doctor import diagnose, exit_status, render

    findings = diagnose(config, timeout)
    for line in render(findings):
        print(line, flush=True)
    return exit_status(findings)


def _run(path: str) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    return serve(config)


def serve(config: Config) -> int:
    """Run a proxy until SIGTERM/SIGINT; stop gracefully; exit 0."""
    from proxy.app import Proxy

    stop = threading.Event()
    reason = {"why": "signal"}

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        reason["why"] = signal.Signals(signum).name
        stop.set()

    # Before start(): a SIGTERM while starting still means "stop cleanly, exit 0".
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # SIGHUP: re-read the [tls] certificate, key and CAs; running associations keep theirs.
    reload = threading.Event()
    signal.signal(signal.SIGHUP, lambda _signum, _frame: reload.set())
    proxy = Proxy(config)
    try:
        proxy.start()
    except OSError as exc:
        print(f"dicom-proxy: {_startup_failure(config, exc)}", file=sys.stderr)
        proxy.stop(reason="startup failed", grace=0)   # whatever did start (threads)
        return EXIT_FAILURE
    while not stop.wait(0.2):
        if reload.is_set():
            reload.clear()
            proxy.reload_tls()
    proxy.stop(reason=reason["why"])
    sys.stdout.flush()
    return EXIT_OK


def _startup_failure(config: Config, exc: OSError) -> str:
    """One line saying what could not start: the spool, or a listening port."""
    from proxy.store.spool import SpoolError

    if isinstance(exc, SpoolError):
        return f"[spool] dir: {exc}"
    if isinstance(exc, ssl.SSLError):
        return f"[tls] cert/key/ca: unusable ({exc})"
    if str(exc.strerror or "").startswith("[dicomweb]"):
        return f"cannot listen on {exc.strerror}"
    return (f"cannot listen on {config.proxy.host}:{config.proxy.port} or metrics "
            f"{config.metrics.host}:{config.metrics.port}: {exc.strerror or exc}")


if __name__ == "__main__":
    sys.exit(main())
