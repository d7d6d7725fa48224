# TEMPORARY dev override - delete
import pytest
@pytest.fixture(scope="session")
def classifier_bundle():
    return "/tmp/benchdev/cls"
@pytest.fixture(scope="session")
def captioner_bundle():
    return "/tmp/benchdev/realcap"
