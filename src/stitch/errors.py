"""stitch's error types: every failure stitch anticipates (a bad file, setting, argument or run folder)
is a :class:`StitchError`. The CLI prints one as a line naming the setting, file or extra
(:mod:`stitch.apps.boundary`), the service answers a query's own as the client's fault; anything else
keeps its traceback, because that is a bug to report.
"""

from __future__ import annotations


class StitchError(Exception):
    """An anticipated failure: the message says what was found and what to do."""


class UsageError(StitchError, ValueError):
    """An argument, option or setting a caller gave is not one stitch can use."""


class ModelOutputError(StitchError, ValueError):
    """A model produced something unusable (NaN/Inf): the numbers after it would be silently wrong."""


class StateError(StitchError, RuntimeError):
    """An object was used before the step it needs (a scorer before its fit, CUDA asked for where none is)."""
