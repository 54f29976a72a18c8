"""VM tier fixtures (see vmhelpers.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from vmhelpers import lsm, session, ws  # noqa: E402,F401  (fixtures)
