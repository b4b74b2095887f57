"""Registered encoders; each lives in its own module and registers itself on import."""

from modelzoo._discover import import_submodules

import_submodules(__name__, __path__)
