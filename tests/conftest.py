"""Shared pytest configuration: hypothesis profiles, the `layers` factory, and a leftover-mount check."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `import util` works as well as `tests.util`

from tests.util import make_layers, mounts_under, unmount  # noqa: E402

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    settings = None

if settings is not None:
    settings.register_profile(
        "ci",
        derandomize=True,
        deadline=None,
        max_examples=50,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile("dev", deadline=None, max_examples=100, print_blob=True)
    _default = "ci" if os.environ.get("CI", "").lower() not in ("", "0", "false") else "dev"
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or _default)


@pytest.fixture
def layers(tmp_path):
    """Factory: `layers(spec, name="u", readonly=False)` -> tests.util.Layers built under tmp_path/name."""
    counter = [0]

    def factory(spec: dict | None = None, name: str | None = None, **kw):
        if name is None:
            name = "u" if counter[0] == 0 else f"u{counter[0]}"
        counter[0] += 1
        return make_layers(tmp_path / name, spec or {}, **kw)

    return factory


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_mounts(tmp_path_factory):
    """Fail the run loudly if a FUSE or overlay mount is left under pytest's temp dirs."""
    yield
    base = tmp_path_factory.getbasetemp()
    left = mounts_under(base)
    for m in reversed(left):
        unmount(m.mountpoint, fuse=m.fstype.startswith("fuse"))
    if left:
        pytest.fail(
            "mounts left behind by tests (now unmounted): " + ", ".join(f"{m.mountpoint} ({m.fstype})" for m in left),
            pytrace=False,
        )
