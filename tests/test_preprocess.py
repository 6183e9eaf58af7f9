"""Tests for the C-preprocessor pass: macros, conditionals, includes, the line map, errors."""

from __future__ import annotations

import os
import random
import tracemalloc
from pathlib import Path

import pytest

from dprobes.compiler.diagnostics import DiagnosticSink, Severity, SourceLoc
from dprobes.compiler.preprocess import (
    MAX_EXPANSION_TOKENS,
    MAX_INCLUDE_DEPTH,
    MAX_SOURCE_BYTES,
    Preprocessed,
    preprocess,
)


def run(text: str, path: str = "main.rpn", **kwargs) -> tuple[Preprocessed | None, DiagnosticSink]:
    sink = DiagnosticSink()
    return preprocess(path, sink, text=text, **kwargs), sink


def ok(text: str, path: str = "main.rpn", **kwargs) -> Preprocessed:
    result, sink = run(text, path, **kwargs)
    assert result is not None, [d.render() for d in sink]
    assert not sink.diagnostics, [d.render() for d in sink]
    return result


def lines(result: Preprocessed) -> list[str]:
    return result.text.splitlines()


def only_error(sink: DiagnosticSink) -> tuple[SourceLoc, str]:
    """The single error reported, as (location, message)."""
    assert len(sink.errors) == 1, [d.render() for d in sink]
    error = sink.errors[0]
    assert isinstance(error.loc, SourceLoc), error.render()
    return error.loc, error.message


def where(loc: SourceLoc) -> tuple[str, int, int]:
    return loc.file, loc.line, loc.column


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


# -- macros and conditionals ---------------------------------------------------------


def test_object_like_macro_keeps_columns():
    result = ok("#define REG eax\npush r, REG\n  pop gv, 0\n")
    assert lines(result) == ["push r, eax", "  pop gv, 0"]
    assert result.origins == (("main.rpn", 2), ("main.rpn", 3))
    assert result.loc(2, 3, 6) == SourceLoc("main.rpn", 3, 3, 6)


def test_function_like_macro():
    result = ok("#define ADD(a, b) push a\\\n  push b\\\n  add\nADD(1, 2) \n")
    assert lines(result)[0].split() == ["push", "1", "push", "2", "add"]
    assert result.origins == (("main.rpn", 4),)


def test_text_after_a_shorter_expansion_keeps_its_column():
    result = ok("#define F(x) x\n   push  F(12345)   log 1\n")
    assert lines(result) == ["   push  12345      log 1"]
    assert lines(result)[0].index("log") == "   push  F(12345)   log 1".index("log")


def test_empty_macro_leaves_columns_alone():
    assert lines(ok("#define NOTHING\nNOTHING push 1\n")) == ["        push 1"]


def test_undef():
    assert lines(ok("#define X 1\n#undef X\npush X\n")) == ["push X"]


def test_command_line_defines():
    result = ok(
        "push N\n#ifdef FLAG\npush FLAG\n#endif\npush TWICE(3)\n",
        defines={"N": "5", "FLAG": "", "TWICE(x)": "x x"},
    )
    assert lines(result) == ["push 5", "push 1", "push 3 3"]


def test_bad_command_line_define():
    result, sink = run("x\n", defines={"1abc": "2"})
    assert result is None
    assert "bad -D definition '1abc=2'" in sink.errors[0].message


def test_conditionals():
    source = """#define A 2
#if A == 1
one
#elif A == 2 && defined(A)
two
#else
other
#endif
#ifdef B
b
#endif
#ifndef B
not_b
#endif
#if !defined B
still_not_b
#endif
"""
    result = ok(source)
    assert [line for line in lines(result) if line] == ["two", "not_b", "still_not_b"]
    assert result.loc(lines(result).index("two") + 1, 1).line == 5
    assert result.loc(lines(result).index("still_not_b") + 1, 1).line == 16


def test_comments_are_blanked_and_lines_keep_their_origin():
    source = "/* a header\n   over two lines */\npush 1 // one\n  pop /* x */ gv, 0\n"
    result = ok(source)
    assert lines(result) == ["", "push 1", "  pop         gv, 0"]
    assert result.origins == (("main.rpn", 2), ("main.rpn", 3), ("main.rpn", 4))
    assert lines(result)[2].index("gv") == "  pop /* x */ gv, 0".index("gv")


def test_line_after_multiline_comment_maps_exactly():
    result = ok("a\n/* one\ntwo\nthree */ push 1\nb\n")
    assert lines(result) == ["a", "         push 1", "b"]
    assert result.origins == (("main.rpn", 1), ("main.rpn", 4), ("main.rpn", 5))
    assert result.loc(2, 10) == SourceLoc("main.rpn", 4, 10)


def test_hash_is_only_special_at_line_start():
    assert lines(ok("push 1 # not a directive\n")) == ["push 1 # not a directive"]


def test_crlf_and_form_feed_keep_line_numbers():
    result = ok("a\r\nb\fc\r\n#if 1\r\nd\r\n#endif\r\n")
    assert lines(result) == ["a", "b c", "d"]
    assert [line for _, line in result.origins] == [1, 2, 4]


def test_loc_clamps_and_empty_input_still_maps():
    result = ok("a\nb\n")
    assert result.loc(0, 1).line == 1
    assert result.loc(99, 1).line == 2
    empty = ok("")
    assert empty.loc(1, 1) == SourceLoc("main.rpn", 1, 1)


def test_reads_the_file_when_no_text_is_given(tmp_path):
    main = write(tmp_path / "main.rpn", "#define X 7\npush X\n")
    sink = DiagnosticSink()
    result = preprocess(main, sink)
    assert result is not None and lines(result) == ["push 7"]
    assert result.origins == ((main, 2),)


# -- includes ------------------------------------------------------------------------


def test_include_origins_are_exact(tmp_path):
    write(tmp_path / "defs.h", "/* defs\n */\n#define R eax\npush r, R\n")
    main = write(tmp_path / "main.rpn", 'name = x\n#include "defs.h"\n\npop gv, 0\n')
    sink = DiagnosticSink()
    result = preprocess(main, sink)
    assert result is not None, [d.render() for d in sink]
    defs = str(tmp_path / "defs.h")
    text = lines(result)
    assert result.origins[text.index("push r, eax")] == (defs, 4)
    assert result.origins[text.index("pop gv, 0")] == (main, 4)
    assert result.origins[0] == (main, 1)


def test_include_names_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    write(tmp_path / "sub" / "a.h", "in_a\n")
    write(tmp_path / "sub" / "main.rpn", '#include "a.h"\n')
    monkeypatch.chdir(tmp_path)
    sink = DiagnosticSink()
    result = preprocess(os.path.join("sub", "main.rpn"), sink)
    assert result is not None and result.origins == ((os.path.join("sub", "a.h"), 1),)


def test_include_searches_the_including_file_then_include_dirs(tmp_path):
    write(tmp_path / "lib" / "outer.h", '#include "inner.h"\n')
    write(tmp_path / "lib" / "inner.h", "from_lib\n")
    write(tmp_path / "inc" / "only_in_dirs.h", "from_dirs\n")
    main = write(tmp_path / "main.rpn", '#include "lib/outer.h"\n#include "only_in_dirs.h"\n')
    sink = DiagnosticSink()
    result = preprocess(main, sink, include_dirs=[str(tmp_path / "inc")])
    assert result is not None and lines(result) == ["from_lib", "from_dirs"]


def test_include_does_not_search_outer_includers_directories(tmp_path):
    write(tmp_path / "beside_main.h", "x\n")
    write(tmp_path / "lib" / "outer.h", '\n#include "beside_main.h"\n')
    main = write(tmp_path / "main.rpn", '#include "lib/outer.h"\n')
    sink = DiagnosticSink()
    assert preprocess(main, sink) is None
    loc, message = only_error(sink)
    assert where(loc) == (str(tmp_path / "lib" / "outer.h"), 2, 1)
    assert "cannot find include file 'beside_main.h'" in message


def test_guarded_self_include_is_fine(tmp_path):
    main = write(tmp_path / "g.rpn", '#ifndef G\n#define G\nonce\n#include "g.rpn"\n#endif\n')
    sink = DiagnosticSink()
    result = preprocess(main, sink)
    assert result is not None and [line for line in lines(result) if line] == ["once"]


def test_pragma_once(tmp_path):
    write(tmp_path / "o.h", "#pragma once\nonce\n")
    main = write(tmp_path / "m.rpn", '#include "o.h"\n#include "o.h"\n')
    sink = DiagnosticSink()
    result = preprocess(main, sink)
    assert result is not None and lines(result) == ["once"]


# -- errors --------------------------------------------------------------------------


def test_missing_file(tmp_path):
    sink = DiagnosticSink()
    assert preprocess(str(tmp_path / "nope.rpn"), sink) is None
    assert "cannot read" in sink.errors[0].message
    assert "No such file" in sink.errors[0].message


def test_directory(tmp_path):
    sink = DiagnosticSink()
    assert preprocess(str(tmp_path), sink) is None
    assert "Is a directory" in sink.errors[0].message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    path = write(tmp_path / "secret.rpn", "x\n")
    os.chmod(path, 0)
    sink = DiagnosticSink()
    assert preprocess(path, sink) is None
    assert "Permission denied" in sink.errors[0].message


def test_not_utf8_names_the_byte_position(tmp_path):
    path = tmp_path / "bad.rpn"
    path.write_bytes(b"push 1\npush \xff\n")
    sink = DiagnosticSink()
    assert preprocess(str(path), sink) is None
    loc, message = only_error(sink)
    assert where(loc) == (str(path), 2, 6)
    assert "not UTF-8" in message and "0xff" in message and "2:6" in message


def test_nul_byte_names_the_position(tmp_path):
    path = tmp_path / "nul.rpn"
    path.write_bytes(b"a\nbc\x00d\n")
    sink = DiagnosticSink()
    assert preprocess(str(path), sink) is None
    loc, message = only_error(sink)
    assert where(loc) == (str(path), 2, 3)
    assert "NUL" in message and "2:3" in message


def test_file_too_large(tmp_path):
    path = tmp_path / "big.rpn"
    with path.open("wb") as file:
        file.truncate(MAX_SOURCE_BYTES + 1)
    sink = DiagnosticSink()
    assert preprocess(str(path), sink) is None
    message = sink.errors[0].message
    assert "too large" in message
    assert str(MAX_SOURCE_BYTES + 1) in message and str(MAX_SOURCE_BYTES) in message


def test_include_missing_file_is_reported_at_the_include(tmp_path):
    main = write(tmp_path / "main.rpn", 'x\n  #  include "nope.h"\ny\n')
    sink = DiagnosticSink()
    assert preprocess(main, sink) is None
    loc, message = only_error(sink)
    assert where(loc) == (main, 2, 3)
    assert "cannot find include file 'nope.h'" in message


def test_include_of_bad_file_points_into_it(tmp_path):
    (tmp_path / "bad.h").write_bytes(b"ok\n\xc3(\n")
    main = write(tmp_path / "main.rpn", '#include "bad.h"\n')
    sink = DiagnosticSink()
    assert preprocess(main, sink) is None
    loc, message = only_error(sink)
    assert where(loc) == (str(tmp_path / "bad.h"), 2, 1)
    assert "not UTF-8" in message


def test_include_recursion_is_cut_off(tmp_path):
    path = write(tmp_path / "self.rpn", 'x\n#include "self.rpn"\n')
    sink = DiagnosticSink()
    assert preprocess(path, sink) is None
    loc, message = only_error(sink)
    assert where(loc) == (path, 2, 1)
    assert f"more than {MAX_INCLUDE_DEPTH} levels" in message
    hints = " ".join(sink.errors[0].hints)
    assert f"include chain: {path}:2 -> {path}:2" in hints
    assert "includes itself" in hints


@pytest.mark.parametrize(
    ("source", "line", "column", "fragment"),
    [
        ("push 1\n  pop /* never\nclosed\n", 2, 7, "unterminated /* comment"),
        ("a\n#if 1\nb\n", 2, 1, "Unterminated #if"),
        ('a\n  #error no "x" here\n', 2, 3, '#error no "x" here'),
        ("#endif\n", 1, 1, "Misplaced #endif"),
        ("x\n#else\n", 2, 1, "Misplaced #else"),
        ("#elif 1\n", 1, 1, "Misplaced #elif"),
        ("a\n#define\n", 2, 1, "#define expects a macro name"),
        ("#define 1x 2\n", 1, 1, "#define expects a macro name"),
        ("#define F(1) 2\n", 1, 1, "Invalid macro argument"),
        ("#define F(a 2\n", 1, 1, "Missing ')'"),
        ("#undef\n", 1, 1, "#undef expects a macro name"),
        ("x\n#foo bar\n", 2, 1, "unknown preprocessor directive #foo"),
        ("#line 5\n", 1, 1, "unknown preprocessor directive #line"),
        ("a\n#ifdef\n#endif\n", 2, 1, "malformed #ifdef directive"),
        ("#ifdef 3\n#endif\n", 1, 1, "expected a macro name, not '3'"),
        ("a\n#if\n#endif\n", 2, 1, "Empty expression"),
        ("#if 1 +\n#endif\n", 1, 1, "Could not evaluate expression"),
        ("#include\n", 1, 1, '#include expects "FILE"'),
        ("#include nope\n", 1, 1, '#include expects "FILE"'),
        ("#define F(a, b) a b\n\nF(1)\n", 3, 1, "requires 2 arguments"),
    ],
)
def test_errors_point_at_the_source(source, line, column, fragment):
    result, sink = run(source)
    assert result is None
    loc, message = only_error(sink)
    assert where(loc) == ("main.rpn", line, column)
    assert fragment in message


def test_directives_in_skipped_groups_are_not_executed():
    assert lines(ok("#if 0\n#foo\n#error x\n#define\n#endif\ny\n"))[-1] == "y"


def test_warning_and_unknown_pragma_are_warnings():
    result, sink = run("#warning careful\n#pragma weird\nx\n")
    assert result is not None and lines(result) == ["x"]
    assert [(d.severity, d.message) for d in sink] == [
        (Severity.WARNING, "#warning careful"),
        (Severity.WARNING, "ignoring #pragma weird"),
    ]


def test_empty_path_gets_a_name():
    assert ok("x\n", path="").origins == (("<input>", 1),)


def test_none_only_for_new_errors():
    sink = DiagnosticSink()
    sink.error(None, "from an earlier pass")
    assert preprocess("main.rpn", sink, text="x\n") is not None


def test_pcpp_prints_nothing(capsys):
    run('#error e\n#warning w\n#endif\n#include "nope"\n')
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_never_raises_on_garbage():
    pieces = [
        "#",
        "define",
        "undef",
        "if",
        "ifdef",
        "elif",
        "else",
        "endif",
        "include",
        "error",
        "pragma",
        "defined",
        "(",
        ")",
        ",",
        "X",
        "F",
        "1",
        '"',
        '"x.h"',
        "<",
        ">",
        "/*",
        "*/",
        "//",
        "\n",
        " ",
        "\\",
        "##",
        "...",
        "'",
        "__LINE__",
        "é",
        "\r",
    ]
    rng = random.Random(7)
    for _ in range(300):
        source = "".join(
            rng.choice(pieces) + rng.choice(["", " ", "\n"]) for _ in range(rng.randint(0, 30))
        )
        result, sink = run(source)
        assert (result is None) == (not sink.ok)
        if result is not None:
            assert len(result.origins) == result.text.count("\n")


# -- bounds on work and memory -------------------------------------------------------


def test_a_macro_bomb_is_stopped_at_its_invocation():
    """Each macro doubles the previous one: 2**29 tokens unless the expansion is bounded."""
    defines = "#define A0 1\n" + "".join(f"#define A{i} A{i - 1} A{i - 1}\n" for i in range(1, 30))
    result, sink = run(defines + "name = m\n    push A29\n")
    loc, message = only_error(sink)
    assert result is None
    assert where(loc) == ("main.rpn", 32, 10) and loc.end_column == 13
    assert f"macro expansion too large: over {MAX_EXPANSION_TOKENS} tokens" == message


def test_a_bomb_in_an_if_expression_is_stopped():
    defines = "#define A0 1\n" + "".join(f"#define A{i} A{i - 1}+A{i - 1}\n" for i in range(1, 30))
    _, sink = run(defines + "#if A29\n#endif\n")
    loc, message = only_error(sink)
    assert where(loc)[:2] == ("main.rpn", 31) and "macro expansion too large" in message


def test_long_files_keep_invocations_that_span_lines():
    """pcpp is made to let go of what it holds every few dozen lines, never inside an
    invocation: one open across lines, or a macro name whose '(' is on the next line."""
    filler = "    push 1\n" * 100
    text = (
        "#define F(a, b) a b\n#define G F\n"
        + filler
        + "F(push,\n 2)\n"
        + filler
        + "G\n(push, 3)\n"
        + filler
        + "F\n\n(push, 4)\n"
    )
    out = [line.strip() for line in lines(ok(text)) if line.strip() != "push 1"]
    assert out == ["push 2", "push 3", "push 4"]
    result = ok(text)
    assert len(lines(result)) == len(result.origins) and result.origins[-1] == ("main.rpn", 307)


def test_memory_follows_the_output_not_the_whole_file():
    """pcpp holds every line up to the next directive unless it is made to let go; with
    5000 two-line blocks the peak was 18.9 MiB held at once, it is 3.7 MiB now."""
    text = "name = m\nmodtype = user\noffset = 0\n" + "    push r, eax\n    log 1\n" * 5000
    tracemalloc.start()
    try:
        ok(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024
