"""The project's own files a module runs: itself and every project module it imports, directly
or through others, found by reading the imports (nothing is run).

One list for two uses: dvc.yaml's code deps of each stage are exactly these files (tested), and
the train stage's resume fingerprint hashes them, so that a state saved by other code is never
continued.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def project_files(module: str) -> list[Path]:
    """`module` (a dotted name, e.g. "stages.train") and the project files it imports, as
    paths relative to the project root, sorted."""
    start = Path(*module.split(".")).with_suffix(".py")
    found, todo = {start}, [start]
    while todo:
        path = todo.pop()
        tree = ast.parse((ROOT / path).read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.level:
                # The scan resolves absolute names only: a relative import would go unlisted.
                raise ValueError(f"{path}: a relative import; the scan reads absolute ones only")
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                candidate = Path(*name.split(".")).with_suffix(".py")
                if (ROOT / candidate).is_file() and candidate not in found:
                    found.add(candidate)
                    todo.append(candidate)
    return sorted(found)
