"""The base of every params.yaml section, central or declared by a modality plug-in.

It lives apart from tasks/config.py because the plug-ins declare their own sections
(`encoders.<name>`) and tasks/config.py builds the whole config from them: both need this
base, and neither may import the other's module for it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Frozen, typed as written, and no unknown keys: a typo fails at load with its key path."""

    # allow_inf_nan=False: `lr: .inf` passes `gt=0` and `.nan` fails every bound silently.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
