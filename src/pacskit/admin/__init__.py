"""Operating pacskit servers: the service manager (:mod:`.manager`), the per-server admin API
(:mod:`.api`), and the statistics and notifications it serves (:mod:`.stats`).

See docs/admin.md for the operator's view.
"""
