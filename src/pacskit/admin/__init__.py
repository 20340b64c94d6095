"""Operating pacskit servers from outside: the service manager (:mod:`.manager`: server folders,
background processes, systemd units). A running server's own admin API is part of the server
(:mod:`pacskit.server.admin_api`).

See docs/admin.md for the operator's view.
"""
