"""A lean DICOM upper layer for the retrieve's bulk path (requestor side only).

``pdu`` encodes and parses the PDUs, ``commands`` the DIMSE command sets, ``link``
runs one association over a socket. pynetdicom stays the proxy's DICOM stack
everywhere else (the listener, queries, store-and-forward); this package exists
because a study moved through the proxy crosses it twice, PDU by PDU.
"""
