"""One-line errors and masked URLs, as every command and the health check print them."""

from __future__ import annotations

import pytest

from appliance.core.text import first_line, mask_url, one_line


def test_an_error_is_its_type_and_first_line() -> None:
    assert one_line(ValueError("bad port\n  traceback detail")) == "ValueError: bad port"
    assert one_line(TimeoutError()) == "TimeoutError"


def test_the_first_line_falls_back_to_the_type() -> None:
    assert first_line(OSError("  disk full\nmore")) == "disk full"
    assert first_line(KeyError()) == "KeyError"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:s3cret@[::1]:6380/0", "redis://:****@[::1]:6380/0"),
        ("redis://app:s3cret@10.0.0.5/1", "redis://app:****@10.0.0.5/1"),
        ("redis:/:s3cret@host", "redis:/:****@host"),
        ("redis://host:notaport/0", "redis://host:notaport/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_a_password_never_survives_masking(url: str, masked: str) -> None:
    assert mask_url(url) == masked
