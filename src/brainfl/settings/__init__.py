"""A run's settings: the typed ``RunSettings`` in sections (data, model, training,
federation, privacy, evaluation) with pyproject.toml's defaults and their checks
(:mod:`~brainfl.settings.run_settings`), and the ``--run-config`` grammar of conf files and
``key=value`` pairs (:mod:`~brainfl.settings.run_config`)."""
