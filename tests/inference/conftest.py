"""The user's folder of the CLI tests, made once per test process."""

import pytest
from cli_helpers import make_user_dir


@pytest.fixture(scope="session")
def user_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("user")
  make_user_dir(root)
  return root
