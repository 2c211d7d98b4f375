"""Make this checkout visible to FiftyOne as a plugin, for operator tests.

The plugin directory is the repository root itself (it holds ``fiftyone.yml``
and the ``__init__.py`` entry point), so ``FIFTYONE_PLUGINS_DIR`` cannot point
at a parent folder full of other things. :func:`lazsl_plugin` creates a
temporary plugins folder holding one symlink, ``fiftyone-lazsl -> <repo root>``
(FiftyOne walks plugin folders with ``followlinks=True``), and points both
``fo.config.plugins_dir`` (what the operator registry reads at call time) and
the ``FIFTYONE_PLUGINS_DIR`` environment variable (for subprocesses) at it.

Use in a test module::

    from plugin_fixtures import lazsl_plugin, run_operator  # noqa: F401

    def test_x(lazsl_plugin, dataset):
        result = run_operator("import_attribute_set", dataset, {"source": "cub"})
        result.result  # what the operator's execute() returned

(``tests/`` is on ``sys.path`` under pytest's default import mode, so the
module imports by its bare name; a conftest may also list it in
``pytest_plugins``.) The fixture is session-scoped: the plugin is loaded once.
"""

from __future__ import annotations

import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: The plugin's name, from ``fiftyone.yml``.
PLUGIN_NAME = "@fiftyone-lazsl/lazsl"


def operator_uri(name: str) -> str:
    """Full URI of one of this plugin's operators, e.g. ``import_attribute_set``."""
    return f"{PLUGIN_NAME}/{name}"


@pytest.fixture(scope="session")
def lazsl_plugin(tmp_path_factory):
    """A plugins folder exposing this checkout; yields its path.

    Fails (rather than letting tests report "operator does not exist") with
    FiftyOne's own traceback when the plugin cannot be loaded.
    """
    import fiftyone as fo
    import fiftyone.operators.registry as reg

    plugins = tmp_path_factory.mktemp("plugins")
    os.symlink(ROOT, plugins / "fiftyone-lazsl", target_is_directory=True)
    mp = pytest.MonkeyPatch()
    mp.setattr(fo.config, "plugins_dir", str(plugins))
    mp.setenv("FIFTYONE_PLUGINS_DIR", str(plugins))
    try:
        registry = reg.OperatorRegistry()
        ours = [op for op in registry.list_operators() if op.plugin_name == PLUGIN_NAME]
        errors = registry.list_errors()
        if not ours:
            pytest.fail(
                f"plugin {PLUGIN_NAME} registered no operator from {plugins}; loader errors:\n"
                + ("\n".join(errors) or "(none)"),
                pytrace=False,
            )
        yield plugins
    finally:
        mp.undo()


def run_operator(name: str, dataset, params: dict | None = None, **ctx):
    """Execute one of this plugin's operators immediately, as the App would.

    Args:
        name: operator name (``"import_attribute_set"``) or full URI.
        dataset: a dataset, view's root dataset, or dataset name.
        params: the operator's parameters.
        **ctx: further execution-context keys (``view``, ``selected``...).

    Returns:
        the :class:`fiftyone.operators.executor.ExecutionResult`.

    Raises:
        fiftyone.operators.executor.ExecutionError: the operator failed or its
            inputs did not validate (the message carries the error).
    """
    import fiftyone.operators as foo

    uri = name if name.startswith("@") else operator_uri(name)
    return foo.execute_operator(uri, ctx={"dataset": dataset, "params": dict(params or {}), **ctx})
