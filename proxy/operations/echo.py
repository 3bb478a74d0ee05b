"""C-ECHO: answers whether the route's archives can be reached through the proxy.

Rule: with ``echo = "upstream"`` (default) the proxy C-ECHOes every archive of
the route in parallel and answers Success when at least one of them answers
Success — a federation stays usable with one site down — and Processing
Failure (0x0110, PS3.7 C.4.2) when none does. Each archive's result is an
``upstream`` log line and metric, so the one that is down is named.
With ``echo = "local"`` the proxy answers Success itself (a pure liveness check).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from proxy.routing import archives_for
from proxy.services import Services
from proxy.session import Request
from proxy.status import Status
from proxy.upstream import UpstreamError


def handle(event: Request, services: Services) -> int:
    session = services.session(event)
    route = session.route
    with services.operation(event, "C-ECHO") as record:
        if route is None or route.echo == "local":
            record.status = Status.SUCCESS
            record.details["mode"] = "local"
            return record.status
        archives = archives_for(services.config, route, "C-ECHO")
        record.archives = [a.name for a in archives]

        def echo_one(name: str) -> bool:
            with services.upstream_call(name, "C-ECHO", event) as call:
                try:
                    call["status"] = services.archive(name, event).echo()
                except UpstreamError as exc:  # reported on the upstream line, not raised
                    call["error"], call["hint"] = exc.reason, exc.hint
                    return False
                return bool(call["status"] == Status.SUCCESS)

        with ThreadPoolExecutor(max_workers=len(archives)) as pool:
            results = list(pool.map(echo_one, record.archives))
        up = [n for n, ok in zip(record.archives, results, strict=True) if ok]
        record.details["archives_up"] = up
        if up:
            record.status = Status.SUCCESS
        else:
            record.status = Status.PROCESSING_FAILURE
            record.hint = "no archive of this route answered C-ECHO; see the upstream lines"
        return int(record.status)
