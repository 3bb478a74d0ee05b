"""The DICOM upper layer, sans-IO: PDUs (``pdu``, ``items``), the PS3.8 state table
(``states``), DIMSE reassembly and fragmentation (``dimse``), and the association
object that ties them together (``connection``, ``events``). No sockets there: an I/O
driver feeds bytes in and writes the bytes it is given.

The driver: ``io`` (one event loop: listener, connection cap, TLS, requestor connect,
worker pool, shutdown) and ``link`` (one association on a transport: its Handler,
timers and flow control). ``negotiation`` decides the A-ASSOCIATE-AC/RJ, pure.
"""
