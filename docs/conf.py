"""Sphinx configuration of taskflow's API reference (``docs/build.sh``, ``tests/test_docs.py``).

numpydoc validation turns a public function, class or method documented here that lacks a
docstring (GL08) or an Examples section (EX01) into a warning, and the build runs with ``-W``:
the reference fails to build until it is documented.
"""

from __future__ import annotations

# taskflow is imported as installed (pip install -e ".[docs]"): ops/ and schedulers/ only become
# taskflow.ops and taskflow.schedulers through the package mapping in setup.py.

project = "taskflow"
author = "The taskflow authors"
copyright = "2026, The taskflow authors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
]

exclude_patterns = ["_build", "architecture.md"]
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"

# autodoc: every public method of a documented class appears, with or without a docstring (so
# that validation sees it); private names never do
autodoc_default_options = {"member-order": "bysource", "undoc-members": True}
autodoc_typehints = "signature"
autodoc_inherit_docstrings = False
autosummary_generate = False

# numpydoc: render the sections, and fail on undocumented or example-less public API
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks = {"GL08", "EX01"}
numpydoc_validation_exclude = {r"\._[^.]*$", r"\.__\w+__$"}

html_theme = "alabaster"
html_title = "taskflow"
html_static_path: list[str] = []


def skip_data_members(app, what, name, obj, skip, options):
    """Leave attributes and properties to the class docstring's Attributes section.

    Dataclass fields and properties would otherwise each be validated on their own and need
    an Examples section of their own; methods and functions are always documented.
    """
    if what in ("class", "exception") and (
        isinstance(obj, property) or not callable(obj) or isinstance(obj, type)
    ):
        return True
    return skip


def setup(app):
    app.connect("autodoc-skip-member", skip_data_members)
