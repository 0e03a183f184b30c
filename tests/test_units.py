"""Size and CPU-list parsing."""

import pytest

from ptesim.errors import UsageError
from ptesim.units import format_size, parse_cpu_list, parse_folio_size, parse_size


def test_parse_size_units() -> None:
    """Binary suffixes, with or without B/iB."""
    assert parse_size("64K") == 65536
    assert parse_size("2M") == 2 << 20
    assert parse_size("1GiB") == 1 << 30
    assert parse_size("4096") == 4096


@pytest.mark.parametrize("bad", ["1Q", "", "K", "-4K", "0", "1.5M"])
def test_parse_size_rejects(bad: str) -> None:
    """Malformed sizes are user errors."""
    with pytest.raises(UsageError):
        parse_size(bad)


def test_format_roundtrip() -> None:
    """Sizes print as sysfs names."""
    for text in ("4K", "64K", "2M", "1G", "48K"):
        assert format_size(parse_size(text)) == text


def test_folio_size_must_be_power_of_two_pages() -> None:
    """48K is not a folio size; sizes beyond the PMD are refused."""
    assert parse_folio_size("64K", 4096, 9) == 4
    with pytest.raises(UsageError, match="power-of-two"):
        parse_folio_size("48K", 4096, 9)
    with pytest.raises(UsageError, match="PMD"):
        parse_folio_size("4M", 4096, 9)


def test_cpu_lists() -> None:
    """Comma lists and ranges, sorted and deduplicated."""
    assert parse_cpu_list("1,8,16") == [1, 8, 16]
    assert parse_cpu_list("1-3,2") == [1, 2, 3]
    for bad in ("0", "a", "3-1", "1,,2"):
        with pytest.raises(UsageError):
            parse_cpu_list(bad)
