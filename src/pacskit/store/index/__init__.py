"""The DICOM index: what C-FIND matches on and C-MOVE selects by, in SQL.

- :mod:`~pacskit.store.index.models`: the schema (Patient / Study / Series / Instance, SQLAlchemy 2)
- :mod:`~pacskit.store.index.database`: :class:`~pacskit.store.index.database.Index`, the engine and
  the transactional steps of the data store (ingest, check, reindex)
- :mod:`~pacskit.store.index.extract`: the indexed attributes of an instance, from one raw walk
- :mod:`~pacskit.store.index.locate`: which study and patient hold given instances (record keepers)
"""
