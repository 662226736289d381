"""The report pages' HTML: Jinja templates in ``templates/`` (a base page, macros, one template per page)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2


def render(context: dict[str, Any], template: str) -> str:
    """The page from ``templates/<template>`` with ``context`` (autoescaped; a missing value is an error)."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment.get_template(template).render(**context)
