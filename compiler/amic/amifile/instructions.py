"""The instruction table: one row per Amifile instruction.

It is the single source for everything that differs per instruction and is
not the shape of its arguments (that is ``grammar.lark``): the lexer reads
``mode`` to split arguments, the assembly step reads ``scope`` for placement
checks, syntax errors quote ``usage`` and ``needs``, and an unknown word is
matched against the names for a "did you mean". Tests keep the grammar's
``%declare``, the record classes (``records.py``) and the reference table in
``docs/language.md`` in step with it.
"""

from __future__ import annotations

import attrs

__all__ = ["DOCKERFILE_HINTS", "INSTRUCTIONS", "Instruction"]


@attrs.frozen
class Instruction:
    """One Amifile instruction."""

    name: str
    scope: str
    """``global`` (before the first SERVICE), ``service`` (inside a block) or ``any``."""
    mode: str
    """How arguments are lexed: ``words``, ``pairs`` (``NAME=value`` splits), ``copy``
    (leading ``--options``) or ``script`` (raw rest of line, or a heredoc)."""
    usage: str
    needs: str
    """Completes "<NAME> needs ..." when the arguments are missing."""
    summary: str


INSTRUCTIONS: dict[str, Instruction] = {
    i.name: i
    for i in (
        Instruction("FROM", "global", "words", "FROM IMAGE",
                    "a base image (a name like debian:12, an ami-... id, or an AMI filter)",
                    "The base image."),
        Instruction("ARG", "any", "pairs", "ARG NAME[=default]...",
                    "a variable name",
                    "A build parameter: part of the cache keys of the layers that see it."),
        Instruction("SECRET", "any", "words", "SECRET NAME...",
                    "a secret name (the value comes from amic build --secret)",
                    "A build-time secret: in no key, file, image or log."),
        Instruction("ENV", "any", "pairs", "ENV NAME=value... (or ENV NAME value)",
                    "NAME=value", "An environment variable baked into the artifact."),
        Instruction("LABEL", "global", "pairs", "LABEL key=value...",
                    "key=value", "An image tag."),
        Instruction("NAME", "global", "words", "NAME IMAGE-NAME",
                    "an image name (letters, digits, '.', '_', '-')",
                    "The project's image name (tag amic:name; amic build --name overrides)."),
        Instruction("INCLUDE", "global", "words", "INCLUDE NAME-OR-PATH...",
                    "a stock service name or a path", "Services from another Amifile."),
        Instruction("ENABLE", "global", "words", "ENABLE SERVICE...",
                    "at least one service name", "Services the image runs by default."),
        Instruction("SERVICE", "any", "words", "SERVICE NAME",
                    "a service name", "Starts a service block."),
        Instruction("REQUIRES", "service", "words", "REQUIRES SERVICE...",
                    "at least one service name", "Services this one depends on."),
        Instruction("PACKAGES", "service", "words", "PACKAGES PACKAGE...",
                    "at least one package name", "OS packages to install."),
        Instruction("COPY", "service", "copy", "COPY [--mode=0644] SRC... DEST",
                    "at least one source and a destination", "Files from the build context."),
        Instruction("INIT", "service", "script", "INIT COMMAND, or INIT <<EOF ... EOF",
                    "a command or a heredoc (<<EOF)", "Runs once, when the image is baked."),
        Instruction("UPDATE", "service", "script", "UPDATE COMMAND, or UPDATE <<EOF ... EOF",
                    "a command or a heredoc (<<EOF)", "Runs at every boot."),
    )
}

DOCKERFILE_HINTS = {
    "RUN": "RUN is a Dockerfile instruction; use INIT (once, at bake time) "
           "or UPDATE (at every boot) inside a SERVICE",
    "ADD": "ADD is a Dockerfile instruction; use COPY",
    "CMD": "amic images run services, not one command; put boot-time commands in UPDATE",
    "ENTRYPOINT": "amic images run services, not one command; put boot-time commands in UPDATE",
    "WORKDIR": "scripts run with /bin/sh; use cd inside INIT or UPDATE",
    "SERVICES": "each service is its own SERVICE block; to run several by default use ENABLE",
}
"""Hints for a Dockerfile instruction (or a near miss) written in an Amifile."""
