"""The README documents every variable the processes read, and the code reads its
configuration through the settings classes only.

`core.settings.Settings` is what a server process reads (the README's settings table);
`cli.client.settings.ClientSettings` is what the command-line client reads (the README's
client table). A direct `os.environ` / `os.getenv` read anywhere else in the process
packages must name one of those documented variables or a platform variable below.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from cli.client.settings import ClientSettings
from core.settings import Settings
from tests.conftest import REPO_ROOT

PROCESS_PACKAGES = ("core", "router", "functions", "predictor", "cli")
SETTINGS_MODULE = REPO_ROOT / "core" / "settings.py"
SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (Settings, ClientSettings)

# Variables the code may read although they are not the platform's own settings: ones a
# runtime or library defines (each with the reason it is read here). An entry nothing
# reads fails `test_platform_variables_are_still_read`.
PLATFORM_VARIABLES: dict[str, str] = {
    "TQDM_DISABLE": "tqdm's own; the CosyVoice engine sets it when unset, so that "
    "upstream's progress bar per synthesis stays out of the server's log",
}


def env_names(settings: type[BaseSettings]) -> dict[str, list[str]]:
    """Field name → the variables that set it (the first is its documented name)."""
    prefix = str(settings.model_config.get("env_prefix", "")).upper()
    names: dict[str, list[str]] = {}
    for field_name, field in settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names[field_name] = [str(choice).upper() for choice in alias.choices]
        elif isinstance(alias, str):
            names[field_name] = [alias.upper()]
        else:
            names[field_name] = [f"{prefix}{field_name.upper()}"]
    return names


def settings_table(readme: str) -> str:
    return readme.split("<!-- settings-table:start -->")[1].split("<!-- settings-table:end -->")[0]


def documented_variables() -> set[str]:
    return {name for cls in SETTINGS_CLASSES for names in env_names(cls).values() for name in names}


def process_sources() -> Iterator[Path]:
    for package in PROCESS_PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            if path != SETTINGS_MODULE:
                yield path


def _is_environ(node: ast.expr) -> bool:
    """`os.environ`, or `environ` imported from os."""
    if isinstance(node, ast.Attribute):
        return node.attr == "environ" and isinstance(node.value, ast.Name) and node.value.id == "os"
    return isinstance(node, ast.Name) and node.id == "environ"


def _is_getenv(node: ast.expr) -> bool:
    if isinstance(node, ast.Attribute):
        return node.attr == "getenv" and isinstance(node.value, ast.Name) and node.value.id == "os"
    return isinstance(node, ast.Name) and node.id == "getenv"


def _literal(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def environment_reads(source: str) -> Iterator[tuple[int, str | None]]:
    """(line, variable) for each read of the environment; None when the name is not a
    literal or the whole environment is used (neither can be checked against the table)."""
    tree = ast.parse(source)
    handled: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _is_getenv(node.func):
            handled.add(id(node.func))
            yield node.lineno, _literal(node.args[0] if node.args else None)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and _is_environ(node.func.value)
            and node.func.attr in ("get", "setdefault")
        ):
            handled.add(id(node.func.value))
            yield node.lineno, _literal(node.args[0] if node.args else None)
        elif isinstance(node, ast.Subscript) and _is_environ(node.value):
            handled.add(id(node.value))
            yield node.lineno, _literal(node.slice)
        elif (
            isinstance(node, ast.Compare)
            and len(node.comparators) == 1
            and _is_environ(node.comparators[0])
        ):
            handled.add(id(node.comparators[0]))
            yield node.lineno, _literal(node.left)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute | ast.Name)
            and (_is_environ(node) or _is_getenv(node))
            and id(node) not in handled
        ):
            yield node.lineno, None


def test_every_setting_is_in_the_readme() -> None:
    table = settings_table((REPO_ROOT / "README.md").read_text())
    missing = [names[0] for names in env_names(Settings).values() if f"`{names[0]}`" not in table]
    assert not missing, f"README settings table lacks {missing}"


def test_every_client_variable_is_in_the_readme() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    missing = [
        names[0] for names in env_names(ClientSettings).values() if f"`{names[0]}`" not in readme
    ]
    assert not missing, f"README lacks the client variables {missing}"


def test_the_code_reads_only_documented_variables() -> None:
    allowed = documented_variables() | PLATFORM_VARIABLES.keys()
    undocumented = [
        f"{path.relative_to(REPO_ROOT)}:{line}: {name or 'the environment, by a computed name'}"
        for path in process_sources()
        for line, name in environment_reads(path.read_text())
        if name not in allowed
    ]
    assert not undocumented, (
        "read through core/settings.py (a Field with a description, and a row in the README "
        f"settings table), or list a platform variable with its reason: {undocumented}"
    )


def test_settings_classes_are_the_known_ones() -> None:
    """A new `BaseSettings` class would read variables this check does not see."""
    known = {cls.__name__ for cls in SETTINGS_CLASSES}
    found = [
        f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {node.name}"
        for path in process_sources()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
        and any(isinstance(base, ast.Name) and base.id == "BaseSettings" for base in node.bases)
        and node.name not in known
    ]
    assert not found, f"settings classes this check does not cover: {found}"


def test_platform_variables_are_still_read() -> None:
    read = {name for path in process_sources() for _, name in environment_reads(path.read_text())}
    stale = sorted(PLATFORM_VARIABLES.keys() - read)
    assert not stale, f"platform variables nothing reads any more: {stale}"


def test_the_scan_sees_every_form_of_read() -> None:
    """The scanner itself: each way of reading a variable is found, with its name."""
    source = (
        "import os\nfrom os import environ, getenv\n"
        "a = os.environ.get('A')\nb = os.environ['B']\nc = os.getenv('C')\n"
        "d = environ.get('D')\ne = getenv('E')\nf = 'F' in os.environ\n"
        "g = os.environ.get(name)\nh = dict(os.environ)\n"
    )
    assert sorted(environment_reads(source), key=lambda read: read[0]) == [
        (3, "A"),
        (4, "B"),
        (5, "C"),
        (6, "D"),
        (7, "E"),
        (8, "F"),
        (9, None),
        (10, None),
    ]
