"""facekd.errors: how a library's exception is quoted in one line."""
from facekd.errors import first_line


def test_first_line_quotes_the_first_line_within_the_limit():
    error = RuntimeError("  [ONNXRuntimeError] : 2 : INVALID_ARGUMENT : bad shape\nStacktrace:\n  frame 1\n")
    assert first_line(error) == "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : bad shape"
    assert first_line(error, limit=18) == "[ONNXRuntimeError]"


def test_first_line_of_an_empty_message_is_the_type_name():
    assert first_line(KeyError()) == "KeyError"
    assert first_line(ValueError("  \n ")) == "ValueError"
