"""The README's library quick start must run as written."""

import re
from pathlib import Path

import pytest

from modbot_ring import InvalidGuildId


def test_quick_start_runs():
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    *body, last = code.strip().splitlines()
    namespace: dict = {}
    exec("\n".join(body), namespace)
    assert namespace["table"].owner(81384788765712384) == "gateway-2"
    with pytest.raises(InvalidGuildId, match="12x"):
        exec(last, namespace)
