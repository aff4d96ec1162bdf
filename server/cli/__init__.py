"""The server's ``safegene`` subcommands (``serve``, ``demo``).

``safegene_runtime`` (the method) never imports the server; its CLI finds these through the ``safegene.commands``
entry points declared in pyproject.toml, so ``safegene serve`` exists exactly when the server is installed.
"""
