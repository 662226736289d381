"""A run's settings: the typed ``RunSettings`` with pyproject.toml's defaults and their checks
(:mod:`~brainfl.settings.run_settings`), and the ``--run-config`` grammar of conf files and
``key=value`` pairs (:mod:`~brainfl.settings.run_config`)."""
