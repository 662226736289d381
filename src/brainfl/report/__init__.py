"""A run's files and the report made from them alone: the result tables' schema, reading a run, the
per-site views, figures, the HTML page and the site comparison with the baselines."""
