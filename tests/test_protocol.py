from sandbox.protocol import extract_answer, extract_code, render_output
from sandbox.result import ErrorInfo, Result


def test_extract_code_fenced():
    text = "<think>zoom in <code>\n```python\nprint(1)\n```\n</code> more <code>print(2)</code>"
    assert extract_code(text) == "print(1)"


def test_extract_code_case_insensitive_and_without_fence():
    assert extract_code("<CODE>python\nx = 2\nprint(x)</Code>") == "x = 2\nprint(x)"
    assert extract_code("<code>print('a')</code>") == "print('a')"


def test_extract_code_missing_or_unclosed():
    assert extract_code("<think>no code here</think>") is None
    assert extract_code("<code>```python\nprint(1)") is None


def test_extract_answer():
    assert extract_answer("<think>..</think> <answer> B </answer><answer>C</answer>") == "B"
    assert extract_answer("no answer") is None


def test_render_output():
    img = Result(ok=True, code="", images=["a.jpg", "b.jpg"])
    assert render_output(img) == "<sandbox_output><image><image></sandbox_output>"
    txt = Result(ok=True, code="", text="42")
    assert render_output(txt) == "<sandbox_output>42</sandbox_output>"
    err = Result(ok=False, code="", error=ErrorInfo("runtime", "NameError: name 'x' is not defined"))
    assert render_output(err) == ("<sandbox_output>Error (runtime): NameError: name 'x' is not "
                                  "defined</sandbox_output>")
