"""The unit tier starts nothing: a test here that asks for the kernel tier's
`daemon` fixture fails at once instead of needing root."""
import pytest


@pytest.fixture
def daemon():
    pytest.fail("tests/unit is pure logic: a test that needs corrald belongs in tests/")
