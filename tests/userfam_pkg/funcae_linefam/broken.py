"""An entry point whose module fails to import (a missing dependency): funcae reports it in one line."""

import a_module_that_is_not_installed  # noqa: F401

family = None
