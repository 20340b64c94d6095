"""The configuration files of a server folder, shared by the server, the client and the CLI.

- :mod:`~pacskit.config.settings`: ``server.toml`` (pydantic models; unknown keys are errors)
- :mod:`~pacskit.config.aetitles`: ``ae-titles.toml``, the registry of remote AEs
- :mod:`~pacskit.config.passwords`: password hashes for the registry's User Identity entries
- :mod:`~pacskit.config.validation`: checks shared by both files (AE titles)
"""
