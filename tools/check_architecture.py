"""Checks the package's architecture from its imports and definitions (run by ``.ci/run``).

* Layers: a module imports only from its own layer or the layers below it (``LAYERS``, bottom
  first); ``superanimal_jax/__init__.py`` (the public API) is imported by nobody inside.
* No module imports a private name (``_x``) from another module.
* Every public module-level class and function, and every public method of a public class, has a
  docstring; every module has one.
* ``examples/`` use only the public API: names in ``superanimal_jax.__all__``.

    python tools/check_architecture.py          # exit 1 and a list of problems if any
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'superanimal_jax'

# Bottom first; a module may import from its own layer and any layer below.
LAYERS = [
    {'constants', 'errors', 'version'},
    {'parallel', 'compilation', 'io', 'ops'},
    {'nn', 'transforms'},
    {'models'},
    {'checkpoints'},
    {'inference'},
    {'analysis', 'training'},
    {'adaptation'},
    {'cli'},
]
LEVEL = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def part_of(module: str) -> str | None:
    """``superanimal_jax.ops.boxes`` -> ``ops``; the package root -> None."""
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else None


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix('')
    parts = list(rel.parts)
    if parts[-1] == '__init__':
        parts = parts[:-1]
    return '.'.join(parts)


def check_file(path: Path) -> list[str]:
    problems = []
    name = module_name(path)
    tree = ast.parse(path.read_text(), str(path))
    rel = path.relative_to(ROOT)
    if ast.get_docstring(tree) is None:
        problems.append(f'{rel}: no module docstring')
    own = part_of(name)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('superanimal_jax'):
            targets = [node.module] if node.module != 'superanimal_jax' else [
                f'superanimal_jax.{a.name}' for a in node.names]
            for target in targets:
                other = part_of(target)
                if name != 'superanimal_jax' and other is None or (
                        node.module == 'superanimal_jax' and other not in LEVEL):
                    problems.append(f'{rel}:{node.lineno}: imports the public API ({target}) from inside')
                    continue
                if own is not None and other is not None and LEVEL[other] > LEVEL[own]:
                    problems.append(f'{rel}:{node.lineno}: {own} (layer {LEVEL[own]}) imports {target} '
                                    f'(layer {LEVEL[other]}, above it)')
            for alias in node.names:
                if alias.name.startswith('_') and not alias.name.startswith('__'):
                    problems.append(f'{rel}:{node.lineno}: imports the private name {alias.name} '
                                    f'from {node.module}')
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith('_'):
            if ast.get_docstring(node) is None:
                problems.append(f'{rel}:{node.lineno}: public {node.name} has no docstring')
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if (isinstance(item, ast.FunctionDef) and not item.name.startswith('_')
                            and ast.get_docstring(item) is None
                            and not any(isinstance(d, ast.Name) and d.id == 'property'
                                        for d in item.decorator_list)):
                        problems.append(f'{rel}:{item.lineno}: public {node.name}.{item.name} '
                                        'has no docstring')
    return problems


def public_names() -> set[str]:
    """``superanimal_jax.__all__``, read from the source."""
    tree = ast.parse((PACKAGE / '__init__.py').read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == '__all__' for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def check_example(path: Path, public: set[str]) -> list[str]:
    """An example may import ``superanimal_jax`` and names of its ``__all__``, nothing deeper."""
    problems, rel = [], path.relative_to(ROOT)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('superanimal_jax'):
            if node.module != 'superanimal_jax':
                problems.append(f'{rel}:{node.lineno}: imports {node.module} (not the public API)')
            problems += [f'{rel}:{node.lineno}: {a.name} is not in superanimal_jax.__all__'
                         for a in node.names if a.name not in public]
        elif isinstance(node, ast.Import):
            problems += [f'{rel}:{node.lineno}: imports {a.name} (not the public API)'
                         for a in node.names if a.name.startswith('superanimal_jax.')]
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id == 'superanimal_jax' and node.attr not in public):
            problems.append(f'{rel}:{node.lineno}: superanimal_jax.{node.attr} is not in __all__')
    return problems


def main() -> int:
    problems = [p for path in sorted(PACKAGE.rglob('*.py')) for p in check_file(path)]
    public = public_names()
    problems += [p for path in sorted((ROOT / 'examples').glob('*.py')) for p in check_example(path, public)]
    unknown = sorted({part_of(module_name(p)) for p in PACKAGE.rglob('*.py')} - set(LEVEL) - {None})
    problems += [f'superanimal_jax/{u}: not in any layer of tools/check_architecture.py' for u in unknown]
    for problem in problems:
        print(problem)
    print(f'{len(problems)} architecture problem(s)' if problems else 'architecture: layers, private names, '
          'docstrings, public API of the examples all fine')
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
