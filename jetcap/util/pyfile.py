"""Importing the user's Python files (model code, adapters) under a private module name."""
import importlib.util
import sys


def import_python_file(path, module_name):
    """The module of the ``.py`` file ``path``, registered in ``sys.modules`` as ``module_name`` (its
    ``if __name__ == "__main__":`` block stays off).  Whatever the file raises propagates, the module
    unregistered again; ImportError when the file cannot be loaded at all."""
    spec = importlib.util.spec_from_file_location(module_name, str(path))
    if spec is None or spec.loader is None:
        raise ImportError("cannot import {}".format(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
