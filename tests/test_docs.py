"""The README and the docs pages cannot drift from the code: every `narrator` subcommand, `--flag`, config key
and repository path they show must exist.

Flags are read from the parsers themselves: narrator/cli.py's, `accelerate launch`'s and torchrun's objects, and
a script's (trainer/run.py, benchmarks/*.py, launch/accelerate/check_config.py) from its add_argument calls, so
that the test imports none of the scripts (trainer/run.py alone would take seconds). A flag is checked against
the command it follows on its line; a flag shown without a command must belong to some command.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import shlex
import types
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from narrator.cli import build_parser
from narrator.demo import DemoConfig
from narrator.sample_book import SampleBookConfig
from narrator.tokenizers.config import TokenizeConfig
from narrator.trainer.config import TrainConfig
from narrator.trainer.generate import GenerateConfig

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "launch" / "README.md"]
README_MAX_LINES = 150  # issue 16: a README a newcomer reads in five minutes

REPO_DIRS = ("benchmarks", "configs", "docs", "launch", "narrator", "streaming", "tests", "tokenfolder",
             "tokenizers", "trainer")
NAMED_PATH = re.compile(rf"(?<![\w./-])((?:{'|'.join(REPO_DIRS)})/[\w./*-]*)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
DOTTED_KEY = re.compile(r"(?<![\w./$-])([a-z][a-z0-9_]*(?:\.(?:[a-z][a-z0-9_]*|\*))+)(?![\w(/-])")
FILE_SUFFIXES = {"py", "yaml", "yml", "json", "jsonl", "md", "txt", "csv", "tar", "wav", "flac", "mp3", "ogg", "m4a",
                 "npy", "safetensors", "html", "png", "sbatch", "gz", "th", "pt", "sh", "whl", "tmp", "old"}
NOT_OURS = {"ray", "sbatch", "scancel", "ffmpeg", "pip", "pytest", "make", "export", "git", "ssh", "nvidia-smi"}
# benchmarks/gpu.sh hands its options to gpu_bench.py (a first word that is no option is run as a command instead).
SCRIPT_PARSER = {"benchmarks/gpu.sh": "benchmarks/gpu_bench.py"}


@dataclass(frozen=True)
class Command:
    """A command whose flags a docs line may show, and the config its `--set` keys belong to."""

    name: str
    flags: frozenset[str]
    roots: tuple[type, ...] = ()


IGNORED = Command("a command of another tool", frozenset())  # its flags are that tool's business


@dataclass(frozen=True)
class Snippet:
    """A command line of a fenced block, or one inline `code` span of the prose."""

    page: Path
    line: int
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _flags(parser: argparse.ArgumentParser) -> frozenset[str]:
    return frozenset(s for action in parser._actions for s in action.option_strings)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))


TRAIN_ROOTS = (TrainConfig,)
ROOTS_OF = {"sample-book": (SampleBookConfig,), "tokenize": (TokenizeConfig,), "kmeans-report": (TokenizeConfig,),
            "inspect": TRAIN_ROOTS, "train": TRAIN_ROOTS, "estimate": TRAIN_ROOTS, "generate": (GenerateConfig,),
            "demo": (DemoConfig,)}
ALL_ROOTS = (TrainConfig, TokenizeConfig, GenerateConfig, DemoConfig, SampleBookConfig)


@cache
def narrator_commands() -> dict[str, Command]:
    parser = build_parser()
    commands = {"": Command("narrator", _flags(parser))}
    for name, sub in _subcommands(parser).items():
        commands[name] = Command(f"narrator {name}", _flags(sub), ROOTS_OF.get(name, ()))
    return commands


@cache
def script_command(rel: str) -> Command:
    """A script's flags, from the add_argument calls in its source."""
    source = ROOT / SCRIPT_PARSER.get(rel, rel)
    flags = {"-h", "--help"}
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")}
    roots = TRAIN_ROOTS if rel in ("trainer/run.py", "benchmarks/gpu_bench.py", "benchmarks/gpu.sh") else ()
    return Command(rel, frozenset(flags), roots)


@cache
def launcher_commands() -> dict[str, Command]:
    from accelerate.commands.launch import launch_command_parser
    from torch.distributed.run import get_args_parser

    return {"accelerate": Command("accelerate launch", _flags(launch_command_parser())),
            "torchrun": Command("torchrun", _flags(get_args_parser()))}


@cache
def every_flag() -> frozenset[str]:
    scripts = [p.relative_to(ROOT).as_posix() for p in [*ROOT.glob("benchmarks/*.py"), ROOT / "trainer" / "run.py",
                                                        ROOT / "launch" / "accelerate" / "check_config.py"]]
    commands = [*narrator_commands().values(), *launcher_commands().values(), *map(script_command, scripts)]
    return frozenset().union(*(c.flags for c in commands))


def snippets(page: Path) -> list[Snippet]:
    """Each line of a fenced block (a `\\` continuation joined to it) and each inline span (which may wrap)."""
    out, prose, fenced, held, start = [], [], False, "", 0
    for no, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
            prose.append("")
            continue
        if not fenced:
            prose.append(line)
            continue
        prose.append("")
        if line.rstrip().endswith("\\"):
            held, start = held + line.rstrip()[:-1] + " ", start or no
            continue
        out.append(Snippet(page, start or no, held + line))
        held, start = "", 0
    text = "\n".join(prose)
    for m in re.finditer(r"`([^`]+)`", text):
        out.append(Snippet(page, text.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split())))
    return out


def words(text: str) -> list[str]:
    try:
        tokens = shlex.split(text)
    except ValueError:  # an apostrophe in a comment
        tokens = text.split()
    return [t.strip("[]`") for t in tokens]


@cache
def _hints(cls: type) -> dict[str, object]:
    return typing.get_type_hints(cls)


def _field_type(cls: type, name: str) -> object | None:
    """The type of a dataclass's field (a dataclass within `X | None`), or None if there is no such field."""
    if not dataclasses.is_dataclass(cls) or name not in {f.name for f in dataclasses.fields(cls)}:
        return None
    kind = _hints(cls)[name]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next((a for a in typing.get_args(kind) if dataclasses.is_dataclass(a)), kind)
    return kind


def key_errors(key: str, roots: tuple[type, ...], where: str) -> list[str]:
    """A dotted config key must resolve, field by field, in one of the typed configs."""
    if key.isupper():  # a placeholder: --set KEY=VALUE
        return []
    for root in roots or ALL_ROOTS:
        kind: object = root
        for part in key.split("."):
            if typing.get_origin(kind) is dict or (part == "*" and dataclasses.is_dataclass(kind)):
                return []  # below a dict any key goes (ray.resources.books_mount)
            kind = _field_type(kind, part)
            if kind is None:
                break
        else:
            return []
    names = ", ".join(r.__name__ for r in roots or ALL_ROOTS)
    return [f"{where}: config key `{key}` is in none of {names}"]


def command_errors(snippet: Snippet) -> list[str]:
    """Subcommands, flags and --set keys of one line, each flag against the command it follows."""
    errors, tokens, context = [], words(snippet.text), None
    narrator = narrator_commands()
    i = 0
    while i < len(tokens):
        tok, nxt = tokens[i], tokens[i + 1] if i + 1 < len(tokens) else ""
        if tok.startswith("#") or tok in ("|", "||", "&&", ";"):
            context = None  # a comment, or the next command: flags there stand alone
        elif tok == "narrator" or tok.endswith("narrator/cli.py"):
            if nxt and not nxt.startswith("-"):
                if nxt.isupper():  # a placeholder: narrator COMMAND --help
                    context = Command(f"narrator {nxt}", frozenset().union(*(c.flags for c in narrator.values())))
                elif nxt in narrator:
                    context = narrator[nxt]
                else:
                    errors.append(f"{snippet.where}: `narrator {nxt}`: narrator has no such subcommand "
                                  f"({', '.join(n for n in narrator if n)})")
                    context = IGNORED
                i += 1
            else:
                context = narrator[""]
        elif tok in ("accelerate", "torchrun"):
            context = launcher_commands()[tok]
            i += tok == "accelerate" and nxt == "launch"
        elif re.fullmatch(r"[\w./-]+\.(py|sh)", tok) and (ROOT / tok).is_file():
            context = script_command(tok)
        elif tok in NOT_OURS:
            context = IGNORED
        elif re.fullmatch(r"--[A-Za-z][\w-]*(=.*)?", tok, re.S):
            flag, has_value, value = tok.partition("=")
            if context is None and flag not in every_flag():
                errors.append(f"{snippet.where}: `{flag}` is an option of no command (narrator's, trainer/run.py's, "
                              f"the scripts', accelerate's or torchrun's)")
            elif context not in (None, IGNORED) and flag not in context.flags:
                errors.append(f"{snippet.where}: `{flag}` is not an option of `{context.name}` "
                              f"(it has {', '.join(sorted(f for f in context.flags if f.startswith('--')))})")
            if flag == "--set" and context is not IGNORED:
                if not has_value:
                    value, i = nxt, i + 1
                errors += key_errors(value.partition("=")[0], context.roots if context else (), snippet.where)
        i += 1
    return errors


def test_every_command_and_flag_the_docs_show_exists():
    errors = [e for page in PAGES for snippet in snippets(page) for e in command_errors(snippet)]
    assert not errors, "the docs show commands or flags the parsers lack:\n" + "\n".join(errors)


def test_every_config_key_the_docs_name_exists():
    sections = {f.name for root in ALL_ROOTS for f in dataclasses.fields(root)
                if dataclasses.is_dataclass(_field_type(root, f.name))}
    errors = []
    for page in PAGES:
        for no, line in enumerate(page.read_text().splitlines(), 1):
            for key in DOTTED_KEY.findall(line):
                head, *_, last = key.split(".")
                if head in sections and last not in FILE_SUFFIXES:
                    errors += key_errors(key, (), f"{page.relative_to(ROOT)}:{no}")
    assert not errors, "the docs name config keys that do not exist:\n" + "\n".join(errors)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_path_the_docs_link_or_name_exists():
    errors = []
    for page in PAGES:
        for no, line in enumerate(page.read_text().splitlines(), 1):
            where = f"{page.relative_to(ROOT)}:{no}"
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):
                    continue  # a URL
                path, _, anchor = target.partition("#")
                linked = (page.parent / path).resolve() if path else page
                if not linked.exists():
                    errors.append(f"{where}: link to {target}: no such file")
                elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                    errors.append(f"{where}: link to {target}: {path or page.name} has no heading #{anchor}")
            for named in NAMED_PATH.findall(line):
                named = named.rstrip(".,:;")
                if not (any(ROOT.glob(named)) if "*" in named else (ROOT / named).exists()):
                    errors.append(f"{where}: `{named}`: no such file or folder in the repository")
    assert not errors, "the docs name paths that do not exist:\n" + "\n".join(errors)


def test_narrator_help_ends_pointing_to_docs_and_each_subcommand_names_its_page():
    parser = build_parser()
    assert "docs/" in parser.format_help().strip().splitlines()[-1]
    for name, sub in _subcommands(parser).items():
        pages = re.findall(r"docs/[\w-]+\.md", sub.format_help())
        assert pages, f"`narrator {name} --help` names no docs/ page"
        for page in pages:
            assert (ROOT / page).is_file(), f"`narrator {name} --help` names {page}, which does not exist"


def test_readme_is_short_and_its_table_lists_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    linked = set(LINK.findall(readme))
    missing = [p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/*.md") if p.relative_to(ROOT).as_posix() not in linked]
    assert not missing, f"README.md's docs table lacks {', '.join(missing)}"


def test_a_renamed_flag_or_key_is_reported_with_its_page_and_line():
    page = ROOT / "README.md"
    errors = command_errors(Snippet(page, 7, "narrator tokenize --outt runs/tokens --set ray.adress=auto book.wav"))
    assert errors == [
        "README.md:7: `--outt` is not an option of `narrator tokenize` (it has --allow-outside-root, --config, "
        "--help, --out, --set)",
        "README.md:7: config key `ray.adress` is in none of TokenizeConfig"]
