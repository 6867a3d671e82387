"""Small tools every layer uses: problems gathered under their flags before any work, and a
counter of the operations that make the host wait for the device."""

from .problems import CHECK_ERRORS, PreflightError, Problems, check_choice, check_fraction, did_you_mean
from .syncs import SyncCounter

__all__ = ["check_choice", "CHECK_ERRORS", "check_fraction", "did_you_mean", "PreflightError", "Problems",
           "SyncCounter"]
