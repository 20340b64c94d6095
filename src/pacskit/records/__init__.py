"""How records leave a process without holding up the DICOM path: a bounded queue and writer thread
(:mod:`~pacskit.records.background`) and RFC 5424 syslog with its transports
(:mod:`~pacskit.records.syslog`). Used by the log destinations, the transaction log and the audit
trail. Imports nothing of pacskit.
"""
