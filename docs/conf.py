"""Sphinx configuration for the romosaic documentation.

Build with::

    python -m sphinx -b html -W --keep-going docs docs/_build/html

The build needs no network access: no intersphinx inventories are fetched.
"""

import romosaic

project = "romosaic"
author = "the romosaic developers"
copyright = "the romosaic developers"  # noqa: A001 - Sphinx's name for it
release = romosaic.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# Docstrings are numpydoc style.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_typehints = "none"

# `name` in docstrings refers to a Python object.
default_role = "py:obj"

# Numpydoc types such as "list of (wcs, shape)" make cross-references to
# every word; a bare "wcs" matches several attributes (OutputGrid.wcs,
# ResampleInput.wcs, ...) and Sphinx warns that the target is ambiguous. Those
# words are descriptions, not links, so the ambiguity warnings are silenced.
suppress_warnings = ["ref.python"]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = []
html_static_path = []
html_theme = "alabaster"
html_title = f"romosaic {release}"
