"""`--help` for the `pipeline-*` programs: what it does, usage, flags by concern.

absl's own `--help` prints the main module's key flags in one alphabetical
list and exits 1; a console script's `__main__` has no docstring, so it
cannot say what the program does either. Here each program's flags are
registered under help groups (absl key flags of a pseudo-module named after
the group: `config.help_group`) and `--help` prints the program's docstring,
then one block per group, in the order the groups were registered, then
`--flagfile`. `--helpfull` adds the groups a program lists only in full
(a sweep's training flags) and absl's own flags (logging, debugging).
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags

SHORT_HELP = frozenset({"--help", "-help", "--helpshort", "-helpshort", "-?"})
FULL_HELP = frozenset({"--helpfull", "-helpfull"})

FLAGFILE_HELP = """
flagfiles and help:
  --flagfile: A file of flags, one --FLAG=VALUE per line (# starts a comment);
    it may include another with --flagfile=. A flag given after --flagfile
    overrides the file's value. flags/*.cfg are examples.
  --help: This help; --helpfull: every flag, absl's own (logging) included."""


def help_request(argv: Sequence[str]) -> str | None:
    """'short' for `--help`, 'full' for `--helpfull`, None when neither is asked.

    Read from the command line before absl parses it, so a help request is
    answered (exit 0) even next to a flag absl would refuse.
    """
    for arg in argv[1:]:
        if arg == "--":
            break
        if arg in SHORT_HELP:
            return "short"
        if arg in FULL_HELP:
            return "full"
    return None


def help_text(
    doc: str,
    flag_values: flags.FlagValues,
    full: bool = False,
    full_only: Sequence[str] = (),
) -> str:
    """The program's help: `doc`, its flags by group, then `--flagfile`.

    Groups are the key-flag pseudo-modules `config.help_group` registered;
    `full_only` groups (and absl's own flags) appear only when `full`.
    """
    groups = list(flag_values.key_flags_by_module_dict())
    own = [g for g in groups if g not in full_only]
    shown = own + [g for g in groups if g in full_only] if full else own
    parts = [doc.strip(), *(flag_values.module_help(g) for g in shown)]
    parts.append(FLAGFILE_HELP)
    if full:
        app.define_help_flags()
        parts += [
            flag_values.module_help(module)
            for module in sorted(flag_values.flags_by_module_dict())
            if module.startswith("absl.")
        ]
    return "\n".join(parts)
