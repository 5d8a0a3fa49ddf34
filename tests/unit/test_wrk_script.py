"""bench/wrk.py's pure parts: the Lua script it writes and the result line it reads back."""
import pytest

from bench import wrk


def test_script_lists_each_target_once_as_lua_strings() -> None:
    text = wrk.script([("/v1/users/1/timelines/home?limit=50", "Bearer a-b_c"),
                       ("/v1/users/2/timelines/home?limit=50", 'Bearer q"uote')])
    assert '{"/v1/users/1/timelines/home?limit=50", "Bearer a-b_c"}' in text
    assert '{"/v1/users/2/timelines/home?limit=50", "Bearer q\\"uote"}' in text
    # The %-formatting left Lua's own operators and format strings intact.
    assert "i = i % #reqs + 1" in text and '"requests": %d' in text


@pytest.mark.parametrize("bad", ["/caf\u00e9", "/a\nb", "/a\tb"])
def test_script_refuses_what_a_lua_literal_would_garble(bad: str) -> None:
    with pytest.raises(ValueError):
        wrk.script([(bad, "Bearer x")])


def test_parse_reads_the_result_line_among_wrk_output() -> None:
    out = ("Running 1s test @ http://127.0.0.1:1\n  1 threads and 1 connections\n"
           'WRK_RESULT {"requests": 10, "duration_us": 1000000, "p50_us": 900}\n')
    assert wrk.parse(out) == {"requests": 10, "duration_us": 1000000, "p50_us": 900}
    with pytest.raises(RuntimeError, match="no result"):
        wrk.parse("unable to connect to 127.0.0.1:1 Connection refused\n")
