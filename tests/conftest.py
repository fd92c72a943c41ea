"""Hypothesis profiles: a quick default, and ``ci`` (HYPOTHESIS_PROFILE=ci)
with at least 500 examples per law and no deadline, as CI machines are loaded."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=60, deadline=None)
settings.register_profile(
    "ci",
    max_examples=500,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# A user's own type (tests/test_operations.py registers it for its own tests
# only): collecting its doctests would register it for every test.
collect_ignore = ["usertype.py"]
