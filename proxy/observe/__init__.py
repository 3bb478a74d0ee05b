"""Observe: what the proxy tells its operators, and how it watches its peers.

- ``events``: the typed events handlers emit, and the bus that hands them to observers;
- ``metrics``: the Prometheus observer (the only ``prometheus_client`` import);
- ``logs``: the JSON-lines log observer (the only structlog setup, the PHI filter);
- ``health``: the periodic C-ECHO to every archive and destination (an extension:
  ``health.start`` in ``proxy.app.EXTENSIONS``), probing through ``proxy.upstream``.

Nothing here imports handler code at runtime (tests/test_layout.py).
"""
