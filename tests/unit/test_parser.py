"""The Amifile parser: every construct, every error, golden IR dumps.

Golden files: ``tests/data/parser/*.Amifile`` with the expected IR in ``*.json``.
Regenerate after an intended change with ``AMIC_UPDATE_GOLDEN=1 pytest tests/unit/test_parser.py``
and review the diff.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import typing
from pathlib import Path

import attrs
import pytest
from amic.amifile import ir, parser, records
from amic.amifile.assembly import assemble
from amic.amifile.instructions import INSTRUCTIONS
from amic.amifile.lexer import split_lines
from amic.errors import AmifileError, Pos

DATA = Path(__file__).parents[1] / "data" / "parser"


def parse(text: str, path: str = "Amifile") -> ir.Amifile:
    return parser.parse_text(textwrap.dedent(text), path)


def error(text: str, path: str = "Amifile") -> AmifileError:
    with pytest.raises(AmifileError) as info:
        parser.parse_text(textwrap.dedent(text), path)
    return info.value


def where(err: AmifileError) -> tuple[int, int]:
    assert err.pos is not None
    return err.pos.line, err.pos.col


def service(text: str) -> ir.Service:
    (svc,) = parse(text).services
    return svc


# ---------------------------------------------------------------- the design example


DESIGN_EXAMPLE = """\
# comments, blank lines, `\\` line continuations
FROM debian:12                 # portable base name, or an explicit ami-… id / AMI filter
ARG DEPLOY_KEY                 # build-time input (env or --build-arg); secret-safe
ENV APP_HOME=/srv/app          # baked, exported to every phase
LABEL team=web                 # image tags
INCLUDE httpd                  # a stock service from services/, or a path

SERVICE web
    REQUIRES httpd
    PACKAGES perl-DBI mod_ssl
    COPY app/ /srv/app
    INIT <<~EOF
        useradd --system webapp
        cpanm --notest Plack
    EOF
    UPDATE /srv/app/bin/subscribe-sns
"""


def test_design_example() -> None:
    a = parser.parse_text(DESIGN_EXAMPLE, "deploy/Amifile")
    assert a.path == "deploy/Amifile"
    assert a.base == ir.BaseImage("debian:12", Pos("deploy/Amifile", 2))
    assert a.base.pos == Pos("deploy/Amifile", 2, 1)
    assert a.args == (ir.Arg("DEPLOY_KEY", None, Pos("x", 0)),)
    assert a.envs == (ir.Env("APP_HOME", "/srv/app", Pos("x", 0)),)
    assert a.labels == (ir.Label("team", "web", Pos("x", 0)),)
    assert a.includes == (ir.Include("httpd", Pos("x", 0)),)
    assert a.includes[0].pos == Pos("deploy/Amifile", 6, 9)
    assert a.enables == ()
    (web,) = a.services
    assert web.name == "web" and web.pos == Pos("deploy/Amifile", 8, 1)
    assert [r.name for r in web.requires] == ["httpd"]
    assert web.requires[0].pos == Pos("deploy/Amifile", 9, 14)
    assert web.packages == ("perl-DBI", "mod_ssl")
    (copy,) = web.copies
    assert (copy.sources, copy.dest, copy.mode, copy.context) == (("app/",), "/srv/app", None,
                                                                   "deploy")
    assert copy.pos == Pos("deploy/Amifile", 11, 5)
    (init,) = web.inits
    assert init.text == "useradd --system webapp\ncpanm --notest Plack\n"
    assert init.pos == Pos("deploy/Amifile", 12, 5)
    assert init.body_line == 13
    (update,) = web.updates
    assert update.text == "/srv/app/bin/subscribe-sns\n"
    assert update.pos == Pos("deploy/Amifile", 16, 5) and update.body_line == 16


# ---------------------------------------------------------------- instructions


def test_empty_file_and_only_comments() -> None:
    assert parser.parse_text("", "Amifile") == ir.Amifile(path="Amifile")
    assert parse("\n  # just a comment\n\n\t\n") == ir.Amifile(path="Amifile")


def test_instructions_are_case_insensitive() -> None:
    a = parse("""\
        from debian:12
        Arg X
        eNv Y=1
        label a=b
        include httpd
        enable web
        service web
          requires httpd
          packages curl
          copy a /b
          init echo hi
          Update echo boot
    """)
    assert a.base is not None and a.base.ref == "debian:12"
    assert [x.name for x in a.args] == ["X"]
    assert [(e.name, e.value) for e in a.envs] == [("Y", "1")]
    assert [e.name for e in a.enables] == ["web"]
    (web,) = a.services
    assert web.packages == ("curl",) and len(web.copies) == 1
    assert web.inits[0].text == "echo hi\n" and web.updates[0].text == "echo boot\n"


def test_from_forms() -> None:
    assert parse("FROM ami-0abc123\n").base.ref == "ami-0abc123"  # type: ignore[union-attr]
    a = parse("FROM owner=136693071363   name=debian-12-*\n")
    assert a.base is not None and a.base.ref == "owner=136693071363 name=debian-12-*"


def test_arg_forms() -> None:
    a = parse("""\
        ARG PLAIN
        ARG WITH_DEFAULT=v1
        ARG EMPTY=
        ARG QUOTED="a b"  ONE='x'  TWO
    """)
    assert [(x.name, x.default) for x in a.args] == [
        ("PLAIN", None), ("WITH_DEFAULT", "v1"), ("EMPTY", ""), ("QUOTED", "a b"),
        ("ONE", "x"), ("TWO", None)]
    assert a.args[3].pos == Pos("Amifile", 4, 5)
    assert a.args[4].pos == Pos("Amifile", 4, 19)


def test_env_forms_and_quoting() -> None:
    a = parse(r"""
        ENV A=1 B=2
        ENV GREETING="hello  world" SINGLE='it''s' ESC="say \"hi\" \\ \n"
        ENV LEGACY some value here
        ENV SPACE=a\ b EQ=x=y EMPTY=
        ENV "QUOTED"=v
    """)
    assert [(e.name, e.value) for e in a.envs] == [
        ("A", "1"), ("B", "2"),
        ("GREETING", "hello  world"), ("SINGLE", "its"), ("ESC", 'say "hi" \\ \\n'),
        ("LEGACY", "some value here"),
        ("SPACE", "a b"), ("EQ", "x=y"), ("EMPTY", ""),
        ("QUOTED", "v"),
    ]
    assert a.envs[1].pos == Pos("Amifile", 2, 9)
    assert a.envs[5].pos == Pos("Amifile", 4, 5)


def test_env_legacy_value_may_contain_equals() -> None:
    (env,) = parse("ENV OPTS --foo=bar -x\n").envs
    assert (env.name, env.value) == ("OPTS", "--foo=bar -x")


def test_env_scope() -> None:
    a = parse("""\
        ENV G=1
        SERVICE web
          ENV S=2 T=3
        SERVICE db
          env U=4
    """)
    assert [e.name for e in a.envs] == ["G"]
    web, db = a.services
    assert [(e.name, e.value) for e in web.envs] == [("S", "2"), ("T", "3")]
    assert [e.name for e in db.envs] == ["U"]
    assert db.envs[0].pos == Pos("Amifile", 5, 7)


def test_label_forms() -> None:
    a = parse("""\
        LABEL team=web "com.example.owner"="Jane Doe" empty=
        LABEL Name='my image'
    """)
    assert [(x.key, x.value) for x in a.labels] == [
        ("team", "web"), ("com.example.owner", "Jane Doe"), ("empty", ""), ("Name", "my image")]
    assert a.labels[1].pos == Pos("Amifile", 1, 16)


def test_include_and_enable() -> None:
    a = parse("""\
        INCLUDE httpd
        INCLUDE ./services/db.Amifile "../with space/x.Amifile"
        ENABLE web worker
        ENABLE cron
        SERVICE web
    """)
    assert [i.ref for i in a.includes] == ["httpd", "./services/db.Amifile",
                                          "../with space/x.Amifile"]
    assert a.includes[2].pos == Pos("Amifile", 2, 31)
    assert [e.name for e in a.enables] == ["web", "worker", "cron"]
    assert a.enables[1].pos == Pos("Amifile", 3, 12)


def test_service_blocks_and_order() -> None:
    a = parse("""\
        SERVICE httpd
        PACKAGES httpd
        SERVICE web
          REQUIRES httpd db
          REQUIRES cache
          PACKAGES perl-DBI mod_ssl
          PACKAGES nginx=1.24.0-1 'g++'
        SERVICE empty_svc-2
    """)
    assert [s.name for s in a.services] == ["httpd", "web", "empty_svc-2"]
    httpd, web, empty = a.services
    assert httpd.packages == ("httpd",)
    assert [r.name for r in web.requires] == ["httpd", "db", "cache"]
    assert web.requires[1].pos == Pos("Amifile", 4, 18)
    assert web.packages == ("perl-DBI", "mod_ssl", "nginx=1.24.0-1", "g++")
    assert empty == ir.Service("empty_svc-2", Pos("x", 0))


def test_copy_forms() -> None:
    web = service("""\
        SERVICE web
          COPY app/ /srv/app
          COPY --mode=0644 a.conf b.conf /etc/app/
          COPY --mode=755 bin/run /usr/local/bin/run
          copy "my file" /opt/x
    """)
    got = [(c.sources, c.dest, c.mode) for c in web.copies]
    assert got == [
        (("app/",), "/srv/app", None),
        (("a.conf", "b.conf"), "/etc/app/", "0644"),
        (("bin/run",), "/usr/local/bin/run", "0755"),
        (("my file",), "/opt/x", None),
    ]
    assert web.copies[0].context == "."
    assert web.copies[1].pos == Pos("Amifile", 3, 3)


def test_copy_context_is_the_amifile_directory() -> None:
    (svc,) = parser.parse_text("SERVICE a\nCOPY x /y\n", "deploy/web/Amifile").services
    assert svc.copies[0].context == "deploy/web"
    (svc,) = parser.parse_text("SERVICE a\nCOPY x /y\n", "/abs/Amifile").services
    assert svc.copies[0].context == "/abs"


def test_one_line_scripts_are_raw_shell() -> None:
    web = service("""\
        SERVICE web
          INIT useradd   --system "web app" 'x'   # a shell comment  
          INIT echo $HOME \\n
          UPDATE   systemctl restart web
    """)
    assert [s.text for s in web.inits] == [
        "useradd   --system \"web app\" 'x'   # a shell comment\n", "echo $HOME \\n\n"]
    assert web.inits[1].pos == Pos("Amifile", 3, 3) and web.inits[1].body_line == 3
    assert [s.text for s in web.updates] == ["systemctl restart web\n"]


def test_several_scripts_keep_order() -> None:
    web = service("SERVICE w\nINIT a\nUPDATE u1\nINIT <<EOF\nb\nEOF\nINIT c\nUPDATE u2\n")
    assert [s.text for s in web.inits] == ["a\n", "b\n", "c\n"]
    assert [s.text for s in web.updates] == ["u1\n", "u2\n"]
    assert [s.body_line for s in web.inits] == [2, 5, 7]


# ---------------------------------------------------------------- comments, continuation


def test_trailing_comments_in_word_instructions() -> None:
    a = parse("""\
        FROM debian:12   # the base
        SERVICE web #the service
          PACKAGES a b # c d
          ENV X=1 #Y=2
          COPY app /srv # note
    """)
    assert a.base is not None and a.base.ref == "debian:12"
    (web,) = a.services
    assert web.packages == ("a", "b")
    assert [(e.name, e.value) for e in web.envs] == [("X", "1")]
    assert web.copies[0].dest == "/srv"


def test_hash_inside_a_word_or_quoted_is_not_a_comment() -> None:
    a = parse("LABEL color=#fff note='# not a comment' c#=1\n")
    assert [(x.key, x.value) for x in a.labels] == [
        ("color", "#fff"), ("note", "# not a comment"), ("c#", "1")]


def test_continuation() -> None:
    a = parse("""\
        SERVICE web
          PACKAGES a \\
                   b \\
            # a comment line inside a continuation is skipped
                   c
          INIT apt-get install -y \\
              curl
          ENV A=1 \\   
              B=2
    """)
    (web,) = a.services
    assert web.packages == ("a", "b", "c")
    assert web.inits[0].text == "apt-get install -y       curl\n"
    assert [(e.name, e.value, e.pos.line, e.pos.col) for e in web.envs] == [
        ("A", "1", 8, 7), ("B", "2", 9, 7)]


def test_continuation_keeps_positions_of_later_lines() -> None:
    (web,) = parse("SERVICE web\nREQUIRES a \\\n  b\n").services
    assert [(r.name, r.pos.line, r.pos.col) for r in web.requires] == [("a", 2, 10), ("b", 3, 3)]


def test_continuation_ends_at_blank_line_and_end_of_file() -> None:
    a = parse("SERVICE web\nPACKAGES a \\\n\nPACKAGES b \\")
    assert a.services[0].packages == ("a", "b")


def test_continuation_joins_the_keyword_line() -> None:
    web = service("SERVICE \\\n  web\nREQUIRES \\\n db\n")
    assert web.name == "web" and web.requires[0].pos == Pos("Amifile", 4, 2)


def test_lone_backslash_lines() -> None:
    assert parser.parse_text("\\", "Amifile") == ir.Amifile(path="Amifile")
    assert parser.parse_text("  \\\n\n", "Amifile") == ir.Amifile(path="Amifile")
    a = parser.parse_text("\\\n   FROM x\n", "Amifile")
    assert a.base is not None and a.base.pos == Pos("Amifile", 2, 4)
    err = error("\\\n   BOGUS\n")
    assert where(err) == (2, 4)


def test_quote_spanning_a_continuation() -> None:
    (env,) = parse('ENV A="x \\\ny"\n').envs
    assert env.value == "x y"


# ---------------------------------------------------------------- line endings, encoding


def test_crlf_and_bom(tmp_path: Path) -> None:
    text = DESIGN_EXAMPLE.replace("\n", "\r\n")
    f = tmp_path / "Amifile"
    f.write_bytes(b"\xef\xbb\xbf" + text.encode())
    got = parser.parse_file(f)
    want = parser.parse_text(DESIGN_EXAMPLE, str(f))
    assert got == want
    assert attrs.asdict(got) == attrs.asdict(want)  # positions too
    assert got.services[0].inits[0].text == "useradd --system webapp\ncpanm --notest Plack\n"


def test_crlf_continuation_and_heredoc() -> None:
    text = "SERVICE web\r\nPACKAGES a \\\r\n  b\r\nINIT <<EOF\r\nx\r\nEOF\r\n"
    web = parser.parse_text(text, "Amifile").services[0]
    assert web.packages == ("a", "b") and web.inits[0].text == "x\n"


def test_bom_in_parse_text_and_columns() -> None:
    a = parser.parse_text("\ufeffFROM x\n", "Amifile")
    assert a.base == ir.BaseImage("x", Pos("Amifile", 1))
    assert a.base is not None and a.base.pos.col == 1


def test_final_line_without_newline() -> None:
    web = service("SERVICE web\nINIT echo done")
    assert web.inits[0].text == "echo done\n"
    web = service("SERVICE web\nINIT <<EOF\necho done\nEOF")
    assert web.inits[0].text == "echo done\n"


def test_parse_file_reads_utf8(tmp_path: Path) -> None:
    f = tmp_path / "Amifile"
    f.write_text("LABEL owner=Zoë\n", encoding="utf-8")
    assert parser.parse_file(str(f)).labels[0].value == "Zoë"
    assert parser.parse_file(f).path == str(f)


def test_bad_utf8(tmp_path: Path) -> None:
    f = tmp_path / "Amifile"
    f.write_bytes(b"FROM debian\nLABEL a=\xc3\xa9\xff\n")
    with pytest.raises(AmifileError) as info:
        parser.parse_file(f)
    err = info.value
    assert err.message == "invalid UTF-8 (byte 0xff)"
    assert err.pos == Pos(str(f), 2, 10)
    assert err.source_line is None   # a file that is not UTF-8 is not shown (issue 18)


def test_unreadable_file_raises_oserror_for_the_caller_to_place(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        parser.parse_file(tmp_path / "nope")
    with pytest.raises(IsADirectoryError):
        parser.parse_file(tmp_path)


# ---------------------------------------------------------------- heredocs


def heredoc(opener: str, body: str) -> ir.Script:
    (svc,) = parser.parse_text("SERVICE web\n  INIT " + opener + "\n" + body, "Amifile").services
    (script,) = svc.inits
    return script


def test_heredoc_plain_keeps_indentation() -> None:
    s = heredoc("<<EOF", "  a\n\tb\n\nc\nEOF\n")
    assert s.text == "  a\n\tb\n\nc\n"
    assert s.pos == Pos("Amifile", 2, 3) and s.body_line == 3


def test_heredoc_plain_terminator_must_not_be_indented() -> None:
    err = error("SERVICE web\nINIT <<EOF\necho\n  EOF\n")
    assert err.message == "unterminated heredoc: no line 'EOF' after INIT <<"
    assert where(err) == (2, 6)
    assert err.source_line == "INIT <<EOF"
    assert err.hint is not None and "line 4 has EOF indented" in err.hint


def test_heredoc_dash_strips_tabs_only() -> None:
    s = heredoc("<<-EOF", "\t\tif x; then\n\t\t  y\n  spaces stay\n\tEOF\n")
    assert s.text == "if x; then\n  y\n  spaces stay\n"


def test_heredoc_dash_terminator_with_spaces_is_not_a_terminator() -> None:
    err = error("SERVICE web\nINIT <<-EOF\nx\n  EOF\n")
    assert "unterminated heredoc" in err.message


def test_heredoc_squiggly_dedents() -> None:
    s = heredoc("<<~EOF", "      useradd x\n\n        nested\n   \n      done\n    EOF\n")
    assert s.text == "useradd x\n\n  nested\n\ndone\n"
    assert s.body_line == 3


def test_heredoc_squiggly_terminator_at_any_indent() -> None:
    assert heredoc("<<~EOF", "  a\nEOF\n").text == "a\n"
    assert heredoc("<<~EOF", "  a\n\t  EOF  \n").text == "a\n"


def test_heredoc_squiggly_mixed_tabs_and_spaces_share_only_the_common_prefix() -> None:
    assert heredoc("<<~EOF", "\t  a\n\tb\nEOF\n").text == "  a\nb\n"


def test_heredoc_quoted_delimiters_are_the_same() -> None:
    plain = heredoc("<<EOF", "echo $HOME\nEOF\n").text
    assert heredoc("<<'EOF'", "echo $HOME\nEOF\n").text == plain == "echo $HOME\n"
    assert heredoc('<<"EOF"', "echo $HOME\nEOF\n").text == plain
    assert heredoc("<<~'EOF'", "  echo $HOME\n  EOF\n").text == plain
    assert heredoc('<<-"EOF"', "\techo $HOME\n\tEOF\n").text == plain


def test_heredoc_any_delimiter_word() -> None:
    assert heredoc("<<SCRIPT", "EOF\nSCRIPT\n").text == "EOF\n"
    assert heredoc("<<END_OF_INIT   ", "a\nEND_OF_INIT\n").text == "a\n"
    assert heredoc("<<~x1", " a\n x1\n").text == "a\n"


def test_heredoc_body_is_opaque() -> None:
    a = parse("""\
        SERVICE web
          INIT <<~EOF
            # not an Amifile comment
            SERVICE evil
            INIT nested
            FROM scratch \\
            PACKAGES x
            cat <<EOT
            EOT
          EOF
          UPDATE <<EOF
        ENABLE nothing
        EOF
        SERVICE next
    """)
    web, nxt = a.services
    assert web.inits[0].text == (
        "# not an Amifile comment\nSERVICE evil\nINIT nested\nFROM scratch \\\nPACKAGES x\n"
        "cat <<EOT\nEOT\n")
    assert web.updates[0].text == "ENABLE nothing\n"
    assert web.updates[0].body_line == 12
    assert a.enables == () and a.base is None and nxt.name == "next"


def test_heredoc_opener_after_continuation() -> None:
    s = heredoc("\\\n  <<EOF", "x\nEOF\n")
    assert s.text == "x\n" and s.body_line == 4


def test_heredoc_in_update_and_shebang() -> None:
    web = service("SERVICE w\nUPDATE <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\n")
    assert web.updates[0].text == "#!/usr/bin/env python3\nprint(1)\n"
    assert web.updates[0].body_line == 3


def test_heredoc_as_last_line_without_newline() -> None:
    assert heredoc("<<~EOF", "  a\n  EOF").text == "a\n"


def test_heredoc_errors() -> None:
    err = error("SERVICE w\nINIT <<EOF\n")
    assert err.message == "unterminated heredoc: no line 'EOF' after INIT <<"
    assert where(err) == (2, 6)
    assert err.hint == "end it with a line containing only EOF"

    err = error("SERVICE w\n  UPDATE   <<~END\n  x\n  ENDX\n")
    assert err.message == "unterminated heredoc: no line 'END' after UPDATE <<"
    assert where(err) == (2, 12)

    err = error("SERVICE w\nINIT <<EOF\nEOF\n")
    assert err.message == "empty heredoc in INIT" and where(err) == (2, 6)

    err = error("SERVICE w\nINIT <<EOF bash\nx\nEOF\n")
    assert err.message == "unexpected text after the heredoc delimiter in INIT"
    assert where(err) == (2, 6)

    err = error("SERVICE w\nINIT << EOF\n")
    assert err.message == "bad heredoc opener in INIT" and where(err) == (2, 6)

    err = error("SERVICE w\nINIT <<'E O F'\nx\nE O F\n")
    assert err.message == "bad heredoc delimiter 'E O F'" and where(err) == (2, 6)


# ---------------------------------------------------------------- placement errors


def test_from_twice() -> None:
    err = error("FROM a\nARG X\nFROM b\n")
    assert err.message == "FROM given twice (first at Amifile:1)"
    assert where(err) == (3, 1) and err.source_line == "FROM b"


@pytest.mark.parametrize("line", ["FROM x", "NAME n", "LABEL a=b", "INCLUDE httpd",
                                  "ENABLE web", "  label a=b"])
def test_global_instruction_inside_a_service(line: str) -> None:
    err = error(f"FROM a\n\n# c\n\n\n\nSERVICE web\nPACKAGES x\n{line}\n")
    keyword = line.split()[0].upper()
    assert err.message == (f"{keyword} must come before the first SERVICE "
                           "(service 'web' starts at Amifile:7)")
    assert err.pos == Pos("Amifile", 9, len(line) - len(line.lstrip()) + 1)
    assert err.source_line == line


@pytest.mark.parametrize("line", ["REQUIRES a", "PACKAGES p", "COPY a /b", "INIT x",
                                  "UPDATE x", "INIT <<EOF\nx\nEOF"])
def test_service_instruction_before_any_service(line: str) -> None:
    err = error(f"FROM a\n{line}\nSERVICE web\n")
    keyword = line.split()[0]
    assert err.message == f"{keyword} must be inside a SERVICE block"
    assert where(err) == (2, 1)
    assert err.hint == f"start a block with SERVICE NAME before this {keyword}"


def test_duplicate_service_names_both_positions() -> None:
    err = error("SERVICE web\nSERVICE db\n\nSERVICE   web\n")
    assert err.message == "service 'web' is declared twice (first at Amifile:1)"
    assert where(err) == (4, 11)


# ---------------------------------------------------------------- other errors


@pytest.mark.parametrize(("word", "message"), [
    ("PACKAGE", "unknown instruction 'PACKAGE'; did you mean PACKAGES?"),
    ("requre", "unknown instruction 'requre'; did you mean REQUIRES?"),
    ("SERVCE", "unknown instruction 'SERVCE'; did you mean SERVICE?"),
    ("Enabled", "unknown instruction 'Enabled'; did you mean ENABLE?"),
    ("FOO", "unknown instruction 'FOO'"),
    ("RUN", "unknown instruction 'RUN'"),
    ("SERVICES", "unknown instruction 'SERVICES'"),
    ("=x", "expected an instruction (such as SERVICE), found '=x'"),
    ('"FROM"', "expected an instruction (such as SERVICE), found '\"FROM\"'"),
])
def test_unknown_instruction(word: str, message: str) -> None:
    err = error(f"FROM x\n\n   {word} y\n")
    assert err.message == message
    assert where(err) == (3, 4)
    assert err.source_line == f"   {word} y"


def test_unknown_instruction_hints() -> None:
    assert "use INIT" in (error("SERVICE a\nRUN x\n").hint or "")
    assert "use COPY" in (error("SERVICE a\nADD x /y\n").hint or "")
    assert "ENABLE" in (error("SERVICES a b\n").hint or "")
    assert "instructions are FROM, ARG" in (error("SERVICE a\nBLAH\n").hint or "")


@pytest.mark.parametrize(("text", "message", "pos"), [
    ("FROM\n", "FROM needs a base image (a name like debian:12, an ami-... id, or an AMI filter)",
     (1, 5)),
    ("ARG\n", "ARG needs a variable name", (1, 4)),
    ("ENV\n", "ENV needs NAME=value", (1, 4)),
    ("ENV ONLY\n", "ENV needs NAME=value", (1, 9)),
    ("LABEL\n", "LABEL needs key=value", (1, 6)),
    ("INCLUDE   \n", "INCLUDE needs a stock service name or a path", (1, 11)),
    ("ENABLE # nothing\n", "ENABLE needs at least one service name", (1, 17)),
    ("SERVICE\n", "SERVICE needs a service name", (1, 8)),
    ("SERVICE a\nREQUIRES\n", "REQUIRES needs at least one service name", (2, 9)),
    ("SERVICE a\nPACKAGES \\\n\n", "PACKAGES needs at least one package name", (2, 10)),
    ("SERVICE a\nCOPY\n", "COPY needs at least one source and a destination", (2, 5)),
    ("SERVICE a\nCOPY /only\n", "COPY needs at least one source and a destination", (2, 11)),
    ("SERVICE a\nCOPY --mode=0644 /only\n",
     "COPY needs at least one source and a destination", (2, 23)),
    ("SERVICE a\nINIT\n", "INIT needs a command or a heredoc (<<EOF)", (2, 5)),
    ("SERVICE a\nUPDATE   \n", "UPDATE needs a command or a heredoc (<<EOF)", (2, 10)),
])
def test_missing_arguments(text: str, message: str, pos: tuple[int, int]) -> None:
    err = error(text)
    assert err.message == message
    assert where(err) == pos
    assert err.hint is not None and err.hint.startswith("usage: ")


@pytest.mark.parametrize(("text", "message", "pos"), [
    ("SERVICE a b\n", "unexpected 'b' in SERVICE", (1, 11)),
    ("ENV A=1 B\n", "expected NAME=value in ENV, found 'B'", (1, 9)),
    ("LABEL a b\n", "expected NAME=value in LABEL, found 'a'", (1, 7)),
    ("LABEL a=1 b\n", "expected NAME=value in LABEL, found 'b'", (1, 11)),
    ("SERVICE a\nINIT <<EOF\nx\nEOF\nSERVICE b c\n", "unexpected 'c' in SERVICE", (5, 11)),
    ("SERVICE a\nCOPY a --mode=0644 /b\n", None, None),
])
def test_bad_argument_shapes(text: str, message: str | None, pos: tuple[int, int] | None) -> None:
    if message is None:  # options only come first; later they are plain words
        assert service(text).copies[0].sources == ("a", "--mode=0644")
        return
    err = error(text)
    assert err.message == message
    assert where(err) == pos


def test_env_legacy_value_is_plain_words() -> None:
    (env,) = parse("ENV A B=1\n").envs
    assert (env.name, env.value) == ("A", "B=1")


@pytest.mark.parametrize(("text", "message", "pos"), [
    ("SERVICE Web\n", "invalid service name 'Web'", (1, 9)),
    ("SERVICE 1st\n", "invalid service name '1st'", (1, 9)),
    ("SERVICE a.b\n", "invalid service name 'a.b'", (1, 9)),
    ("SERVICE " + "a" * 64 + "\n", "invalid service name '" + "a" * 64 + "'", (1, 9)),
    ("SERVICE ''\n", "invalid service name ''", (1, 9)),
    ("SERVICE a\nREQUIRES b C\n", "invalid service name 'C'", (2, 12)),
    ("ENABLE ok Not_ok\n", "invalid service name 'Not_ok'", (1, 11)),
    ("ARG 1X\n", "invalid ARG name '1X'", (1, 5)),
    ("ARG A-B=1\n", "invalid ARG name 'A-B'", (1, 5)),
    ("ENV A=1 B.C=2\n", "invalid ENV name 'B.C'", (1, 9)),
    ("ENV =x\n", "invalid ENV name ''", (1, 5)),
    ("ENV X-Y value\n", "invalid ENV name 'X-Y'", (1, 5)),
    ("SERVICE a\n ENV 9=x\n", "invalid ENV name '9'", (2, 6)),
    ("LABEL =x\n", "empty LABEL key", (1, 7)),
    ("INCLUDE ''\n", "empty INCLUDE reference", (1, 9)),
    ("SERVICE a\nPACKAGES x ''\n", "empty package name", (2, 12)),
])
def test_invalid_names(text: str, message: str, pos: tuple[int, int]) -> None:
    err = error(text)
    assert err.message == message
    assert where(err) == pos


def test_service_name_limits() -> None:
    name = "a" + "b-_9" * 15 + "xy"
    assert len(name) == 63
    assert service(f"SERVICE {name}\n").name == name


@pytest.mark.parametrize(("opts", "message", "col"), [
    ("--mode=999", "bad --mode '999': expected an octal mode like 0644", 6),
    ("--mode=12", "bad --mode '12': expected an octal mode like 0644", 6),
    ("--mode=01777x", "bad --mode '01777x': expected an octal mode like 0644", 6),
    ("--mode=", "bad --mode '': expected an octal mode like 0644", 6),
    ("--mode", "bad --mode '': expected an octal mode like 0644", 6),
    ("--chmod=644", "unknown COPY option '--chmod'", 6),
    ("--mode=644 --mode=600", "--mode given twice", 17),
])
def test_bad_copy_mode(opts: str, message: str, col: int) -> None:
    err = error(f"SERVICE a\nCOPY {opts} src /dest\n")
    assert err.message == message
    assert where(err) == (2, col)


def test_copy_destination_must_be_absolute() -> None:
    err = error("SERVICE a\nCOPY app srv/app\n")
    assert err.message == "COPY destination 'srv/app' must be an absolute path"
    assert where(err) == (2, 10)
    err = error("SERVICE a\nCOPY '' /x\n")
    assert err.message == "empty path in COPY" and where(err) == (2, 6)


@pytest.mark.parametrize(("text", "message", "pos"), [
    ("ENV A=\"abc\n", "unterminated double quote", (1, 7)),
    ("ENV A='abc\n", "unterminated single quote", (1, 7)),
    ("LABEL a=\"x\\\"\n", "unterminated double quote", (1, 9)),
    ("SERVICE a\nCOPY 'x /y\n", "unterminated single quote", (2, 6)),
    ("ENV A=\"x \\\n  y\nENV B=1\n", "unterminated double quote", (1, 7)),
    ("ENV A=\"x \\\n  y \" C=\"\n", "unterminated double quote", (2, 9)),
])
def test_unterminated_quotes(text: str, message: str, pos: tuple[int, int]) -> None:
    err = error(text)
    assert err.message == message
    assert where(err) == pos


def test_error_render_shows_line_and_caret() -> None:
    err = error("SERVICE web\n    PACKAGE curl\n", path="deploy/Amifile")
    assert err.render() == (
        "deploy/Amifile:2:5: unknown instruction 'PACKAGE'; did you mean PACKAGES?\n"
        "        PACKAGE curl\n"
        "        ^")


def test_errors_come_in_file_order() -> None:
    # a syntax error on line 2 wins over a lexing error on line 3
    err = error("SERVICE a\nREQUIRES\nBOGUS\n")
    assert where(err) == (2, 9)


# ---------------------------------------------------------------- values and the parser object


def test_ir_is_frozen_and_hashable() -> None:
    a = parser.parse_text(DESIGN_EXAMPLE, "Amifile")
    hash(a)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        a.path = "x"  # type: ignore[misc]


def test_positions_do_not_affect_equality() -> None:
    one = parse("SERVICE web\nPACKAGES a\n")
    two = parse("\n# moved\n\nservice   web\n    PACKAGES   a   \n")
    assert one == two


def test_parser_is_built_once() -> None:
    assert parser.parser() is parser.parser()


def test_instruction_table_covers_the_grammar() -> None:
    grammar = (Path(parser.__file__).parent / "grammar.lark").read_text()
    declared = grammar.split("%declare", 1)[1].split("\n", 1)[0].split()
    assert declared == list(INSTRUCTIONS)


def test_every_instruction_has_a_record_class() -> None:
    names = [cls.__name__.upper() for cls in typing.get_args(records.Record)]
    assert names == list(INSTRUCTIONS)


def test_language_reference_lists_the_instruction_table() -> None:
    """docs/language.md's instruction table: same rows, same order, same placement."""
    doc = (Path(__file__).parents[2] / "docs" / "language.md").read_text()
    table = doc.split("| instruction | where |", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| `")]
    scope = {"global": "global", "service": "service", "any": ("global or service", "anywhere")}
    assert [name.strip(" `") for name, _ in rows] == list(INSTRUCTIONS)
    for (name, where), spec in zip(rows, INSTRUCTIONS.values()):
        assert where.strip().startswith(scope[spec.scope]), (name, where)


def test_grammar_cache_is_private_and_optional(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("AMIC_NO_GRAMMAR_CACHE", raising=False)
    path = parser.grammar_cache_file()
    assert path is not None and path.startswith(str(tmp_path / "cache" / "amic"))
    assert os.stat(tmp_path / "cache" / "amic").st_mode & 0o077 == 0
    monkeypatch.setenv("AMIC_NO_GRAMMAR_CACHE", "1")
    assert parser.grammar_cache_file() is None
    monkeypatch.delenv("AMIC_NO_GRAMMAR_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    name = "grammar-py%d%d.lark-cache" % sys.version_info[:2]
    assert parser.grammar_cache_file() == str(tmp_path / "home" / ".cache" / "amic" / name)


def test_grammar_cache_roundtrip_and_corrupt_cache(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("AMIC_NO_GRAMMAR_CACHE", raising=False)
    build = parser.parser.__wrapped__
    want = parser.parse_text(DESIGN_EXAMPLE, "Amifile")
    cache = Path(parser.grammar_cache_file() or "")
    build()  # writes the cache
    assert cache.stat().st_size > 0
    assert build().parse(DESIGN_EXAMPLE) is not None  # loads it
    cache.write_bytes(cache.read_bytes()[:100])  # truncated: lark must rebuild, not fail
    records = build().parse(DESIGN_EXAMPLE)   # the records: ToRecords runs as it parses
    assert assemble(records, "Amifile", split_lines(DESIGN_EXAMPLE)) == want


# ---------------------------------------------------------------- golden files


def dump(amifile: ir.Amifile, base: Path) -> str:
    """Deterministic JSON of the IR, positions included; paths relative to ``base``."""

    def value(v: object) -> object:
        if isinstance(v, Pos):
            return f"{os.path.relpath(v.file, base)}:{v.line}:{v.col}"
        if attrs.has(type(v)):
            out = {}
            for f in attrs.fields(type(v)):
                x = getattr(v, f.name)
                out[f.name] = os.path.relpath(x, base) if f.name in ("path", "context") else value(x)
            return out
        if isinstance(v, (list, tuple)):
            return [value(x) for x in v]
        return v

    return json.dumps(value(amifile), indent=2, ensure_ascii=False) + "\n"


GOLDEN = sorted(DATA.glob("*.Amifile"))


def test_golden_files_exist() -> None:
    assert len(GOLDEN) >= 4


@pytest.mark.parametrize("source", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden(source: Path) -> None:
    expected = source.with_suffix(".json")
    got = dump(parser.parse_file(source), DATA)
    if os.environ.get("AMIC_UPDATE_GOLDEN"):
        expected.write_text(got, encoding="utf-8")
    assert expected.exists(), f"run with AMIC_UPDATE_GOLDEN=1 to create {expected.name}"
    assert got == expected.read_text(encoding="utf-8")


# ---------------------------------------------------------------- SECRET and ARG scope


def test_secret_global_and_per_service() -> None:
    a = parse("ARG A=1\nSECRET TOKEN OTHER\nSERVICE web\n  ARG PORT=80\n  SECRET KEY\n")
    assert [s.name for s in a.secrets] == ["TOKEN", "OTHER"] and [x.name for x in a.args] == ["A"]
    (svc,) = a.services
    assert [s.name for s in svc.secrets] == ["KEY"]
    assert [(x.name, x.default) for x in svc.args] == [("PORT", "80")]
    assert a.secrets[1].pos == Pos("Amifile", 2, 14)


@pytest.mark.parametrize("text, message, at", [
    ("SECRET A=b\n", "SECRET takes names only, not a value: 'A=b'", (1, 8)),
    ("SECRET\n", "SECRET needs a secret name (the value comes from amic build --secret)", (1, 7)),
    ("SECRET 9x\n", "invalid SECRET name '9x'", (1, 8)),
    ("SECRET PATH\n", "SECRET name 'PATH' is reserved", (1, 8)),
    ("SECRET AMIC_SECRET_NAMES\n",
     "SECRET name 'AMIC_SECRET_NAMES' is reserved: names starting with AMIC_ are amic's own",
     (1, 8)),
    ("ARG AMIC_STATE_DIR=/x\n",
     "ARG name 'AMIC_STATE_DIR' is reserved: names starting with AMIC_ are amic's own", (1, 5)),
    ("SERVICE w\n  ENV A=1 AMIC_LOG_DIR=/x\n",
     "ENV name 'AMIC_LOG_DIR' is reserved: names starting with AMIC_ are amic's own", (2, 11)),
    ("SECRET A A\n", "SECRET A: A is already a SECRET (at Amifile:1)", (1, 10)),
    ("ARG A\nSECRET A\n", "SECRET A: A is already an ARG (at Amifile:1)", (2, 8)),
    ("SECRET A\nARG A=1\n", "ARG A: A is already a SECRET (at Amifile:1)", (2, 5)),
    ("ENV A=1\nSECRET A\n", "SECRET A: A is already an ENV (at Amifile:1)", (2, 8)),
    ("SECRET A\nSERVICE w\n  SECRET A\n", "SECRET A: A is already a global SECRET (at Amifile:1)",
     (3, 10)),
    ("SECRET A\nSERVICE w\n  ENV A=1\n", "ENV A: A is already a global SECRET (at Amifile:1)",
     (3, 7)),
    ("SERVICE w\n  ARG A\n  SECRET A\n", "SECRET A: A is already an ARG (at Amifile:2)", (3, 10)),
    ("ARG A\nSERVICE w\n  ARG A=2\n", "ARG A is already a global ARG (at Amifile:1)", (3, 7)),
])
def test_secret_and_scoped_arg_placement_errors(text: str, message: str, at) -> None:
    err = error(text)
    assert err.message == message and where(err) == at


def test_the_same_name_in_two_services_is_fine() -> None:
    a = parse("SERVICE a\n  SECRET K\n  ARG V\nSERVICE b\n  SECRET K\n  ARG V\n")
    assert [s.secrets[0].name for s in a.services] == ["K", "K"]
