"""The README's reading order: every module is in it, and none imports one that comes later."""
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def reading_order():
    """The Python files the README's reading-order table links, in the order they appear."""
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Reading order", 1)[1].split("\n## ", 1)[0]
    return list(dict.fromkeys(re.findall(r"\]\(((?:tests/)?\w+\.py)\)", table)))


def imported_files(path):
    """The project's files that `path` imports, anywhere in it (its demo included)."""
    names = set()
    for node in ast.walk(ast.parse((REPO / path).read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    folders = [REPO, REPO / "tests"]
    return {str(file.relative_to(REPO)) for name in names for folder in folders
            if (file := folder / f"{name}.py").is_file()}


def test_every_module_is_in_the_reading_order():
    order = reading_order()
    modules = sorted(path.name for path in REPO.glob("*.py"))
    assert [name for name in modules if name not in order] == []
    assert order[0] == "test.py" and order[-1] == "main.py"


def test_no_file_imports_one_that_comes_later():
    order = reading_order()
    looking_ahead = [f"{path} imports {imported}" for index, path in enumerate(order)
                     for imported in sorted(imported_files(path)) if imported not in order[:index]]
    assert looking_ahead == []
