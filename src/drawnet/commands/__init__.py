"""Subcommands of the ``drawnet`` CLI, one module each (see :mod:`drawnet.cli`)."""
