"""Tools around the proxy, not part of what it serves: run only from ``proxy.cli``.

- ``demo``: ``dicom-proxy demo``, two sandbox archives and the proxy in front;
- ``doctor``: ``dicom-proxy doctor``, every archive and destination probed, what to fix;
- ``synthetic``: deterministic synthetic studies for the demo, tests and benchmarks.

Nothing in the proxy imports this package but ``proxy.cli`` (tests/test_layout.py).
"""
