"""Workflow state kept in the index database, beside the index tables but independent of them.

- :mod:`~pacskit.store.workflow.models`: scheduled procedure steps and MPPS (migration 0003)
- :mod:`~pacskit.store.workflow.worklist`: :class:`~pacskit.store.workflow.worklist.WorklistStore`,
  the Modality Worklist entries and their C-FIND
- :mod:`~pacskit.store.workflow.mpps`: :class:`~pacskit.store.workflow.mpps.MppsStore`, the MPPS
  state rules (PS3.4 F.7)
- :mod:`~pacskit.store.workflow.commitment_models`: Storage Commitment requests (migration 0004)
"""
