"""Fixtures of the differential test: the layer template, built once per session."""

import os

import pytest

from tests.differential import diffkit


@pytest.fixture(scope="session")
def diff_template(tmp_path_factory):
    # host safety: an absolute symlink in the fixture must not lead anywhere real
    assert not os.path.lexists(os.path.dirname(diffkit.ABS_TARGET)), diffkit.ABS_TARGET
    reason = diffkit.skip_reason()
    if reason:
        pytest.skip(reason)
    return diffkit.build_template(tmp_path_factory.mktemp("difftemplate"))


@pytest.fixture
def diff_base(tmp_path_factory):
    return tmp_path_factory.mktemp("diffpair")
