"""The DICOM upper layer, sans-IO: PDUs (``pdu``, ``items``), the PS3.8 state table
(``states``), DIMSE reassembly and fragmentation (``dimse``), and the association
object that ties them together (``connection``, ``events``). No sockets here: an I/O
driver feeds bytes in and writes the bytes it is given.
"""
