"""Store-and-forward and store relay: every C-STORE a workstation sends to an archive.

Job: the package holds the two ways a workstation's C-STORE reaches its archive, in the
order the traffic flows:

    receive.py    C-STORE data sets received straight into a file, sent from a file
    spool.py      the durable on-disk queue: every instance is on disk before Success
    policy.py     pure decisions: what a status means, backoff, contexts, how to send
    drain.py      one sender per archive, emptying the spool oldest first
    mirroring.py  ``store = "relay"``: pure choice of the contexts to offer the workstation
    relay.py      ``store = "relay"``: the archive association tied to the workstation's

The DIMSE handlers stay in ``proxy.operations.store`` and ``proxy.operations.store_relay``
(one module per DIMSE operation).
"""
