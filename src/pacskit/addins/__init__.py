"""The built-in add-ins. Each is an ordinary add-in on the public API of :mod:`pacskit.services`,
registered through the entry point group ``pacskit.addins`` exactly like a third-party one:

verification (C-ECHO), storage (C-STORE), query (C-FIND), retrieve (C-MOVE, C-GET), txlog (the
transaction log), audit (the ATNA audit trail), tls (TLS listener and outgoing TLS), commitment
(Storage Commitment SCP), worklist (Modality Worklist), mpps (Modality Performed Procedure Step).
"""
