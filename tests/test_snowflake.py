import pytest
from hypothesis import given
from hypothesis import strategies as st

from modbot_ring import MAX_GUILD_ID, MAX_SNOWFLAKE, InvalidGuildId, parse_guild_id, shard_for


@pytest.mark.parametrize(
    "value", [1, 81384788765712384, MAX_GUILD_ID, "1", "81384788765712384", str(MAX_GUILD_ID)]
)
def test_accepts_snowflakes(value):
    assert parse_guild_id(value) == int(value)


@pytest.mark.parametrize(
    "value",
    [
        0,
        -1,
        MAX_GUILD_ID + 1,
        MAX_SNOWFLAKE,
        MAX_SNOWFLAKE + 1,
        "0",
        "-5",
        "+5",
        " 5",
        "5 ",
        "5\n",
        "1_000",
        "0x10",
        "012",
        "1.0",
        "",
        "١٢٣",
        "²",
        True,
        False,
        1.0,
        5.5,
        None,
        b"123",
        [1],
        "9" * 21,
        str(MAX_GUILD_ID + 1),
        str(MAX_SNOWFLAKE),
        str(MAX_SNOWFLAKE + 1),
    ],
)
def test_rejects_everything_else_naming_the_value(value):
    with pytest.raises(InvalidGuildId) as err:
        parse_guild_id(value)
    assert repr(value)[:20] in str(err.value)
    assert isinstance(err.value, ValueError)


@given(st.text(max_size=40))
def test_arbitrary_text_only_ever_raises_invalid_guild_id(text):
    try:
        gid = parse_guild_id(text)
    except InvalidGuildId:
        return
    assert str(gid) == text and 1 <= gid <= MAX_GUILD_ID


@given(st.one_of(st.integers(), st.floats(), st.binary(max_size=8), st.none(), st.booleans()))
def test_arbitrary_values_only_ever_raise_invalid_guild_id(value):
    try:
        parse_guild_id(value)
    except InvalidGuildId:
        pass


@given(st.integers(1, MAX_GUILD_ID), st.integers(1, 4096))
def test_shard_for_is_discords_formula(gid, count):
    assert shard_for(gid, count) == (gid >> 22) % count


@pytest.mark.parametrize("count", [0, -1, 1.5, True])
def test_shard_for_rejects_bad_counts(count):
    with pytest.raises(ValueError):
        shard_for(1, count)


def test_the_range_fits_every_store_signed_64_bit():
    """SQLite INTEGER and PostgreSQL BIGINT are signed 64-bit: the largest accepted id
    must round-trip through both, and one more must be refused before it gets there."""
    import sqlite3

    assert MAX_GUILD_ID == 2**63 - 1
    with sqlite3.connect(":memory:") as db:
        db.execute("CREATE TABLE t (id INTEGER)")
        db.execute("INSERT INTO t VALUES (?)", (parse_guild_id(str(MAX_GUILD_ID)),))
        assert db.execute("SELECT id FROM t").fetchone() == (MAX_GUILD_ID,)
        with pytest.raises(OverflowError):
            db.execute("INSERT INTO t VALUES (?)", (MAX_GUILD_ID + 1,))
    with pytest.raises(InvalidGuildId, match=r"2\*\*63-1"):
        parse_guild_id("18446744073709551615")
