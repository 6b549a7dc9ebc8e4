"""A griffe extension for mkdocstrings: a class docstring assigned after the class, `Cls.__doc__ = r\"\"\"...\"\"\"`.

torch.optim assigns its optimizers' docstrings that way (the algorithm box is written once, after the class), and so
does `ivon_lora.optim.ivon.IVON`. griffe reads code without importing it and sees only docstrings in place; this
extension reads such module-level assignments from the module's syntax tree and gives the class its docstring, its
reStructuredText constructs (torch's: `.. math::`, `:math:`, `.. note::`, `Usage::`, ``code``, named links) turned
into the Markdown the rest of the API page is written in.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap

import griffe


def _block(lines: list[str], start: int) -> tuple[list[str], int]:
    """The indented lines after line `start` (blank lines inside included), and the index after them."""
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    return lines[start + 1 : end], end


def rst_to_markdown(text: str) -> str:
    """torch.optim's reStructuredText docstring constructs as Markdown (Google-style sections are left as they are)."""
    targets = {" ".join(name.split()): url for name, url in re.findall(r"^\s*\.\. _([^:]+):\s*\n?\s*(\S+)", text, re.M)}
    text = re.sub(r"^\s*\.\. _[^:]+:\s*\n?\s*\S+\s*$", "", text, flags=re.M)
    text = re.sub(r":math:`([^`]+)`", r"`\1`", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    text = re.sub(r":(?:class|func|meth):`~?([^`]+)`", r"`\1`", text)
    text = re.sub(r"`([^`<]+)`_", lambda m: f"[{m.group(1)}]({targets.get(' '.join(m.group(1).split()), '')})", text)
    return _blocks(text)


def _blocks(text: str) -> str:
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        indent = line[: len(line) - len(line.lstrip())]
        note = re.match(r"\s*\.\. note:: \*\*(.+?)\.?\*\*\s*(.*)", line)
        if line.strip() == ".. math::" or note or (line.rstrip().endswith("::") and not line.strip().startswith("..")):
            body, i = _block(lines, i)
            body = textwrap.dedent("\n".join(body)).strip("\n").splitlines()
            if note:
                inner = _blocks("\n".join([note.group(2), *body] if note.group(2) else body))
                out += [
                    f'{indent}!!! note "{note.group(1)}"',
                    *(f"{indent}    {b}" if b else "" for b in inner.splitlines()),
                ]
            else:
                language = "latex" if line.strip() == ".. math::" else "python"
                if language == "python":
                    out += [line.rstrip()[:-1], ""]
                out += [f"{indent}```{language}", *(indent + b if b else "" for b in body), f"{indent}```"]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class AssignedDocstrings(griffe.Extension):
    def on_module_members(self, *, node, mod, agent=None, **kwargs) -> None:
        if isinstance(node, griffe.ObjectNode) or not isinstance(node, ast.Module):
            return
        for statement in node.body:
            if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1):
                continue
            target = statement.targets[0]
            if not (
                isinstance(target, ast.Attribute) and target.attr == "__doc__" and isinstance(target.value, ast.Name)
            ):
                continue
            if not (isinstance(statement.value, ast.Constant) and isinstance(statement.value.value, str)):
                continue
            owner = mod.members.get(target.value.id)
            if owner is not None and owner.is_class:
                owner.docstring = griffe.Docstring(
                    rst_to_markdown(inspect.cleandoc(statement.value.value)),
                    lineno=statement.lineno,
                    endlineno=statement.end_lineno,
                    parent=owner,
                    # Parsed as the loader parses every other docstring (Google style, the handler's options).
                    parser=getattr(agent, "docstring_parser", None),
                    parser_options=getattr(agent, "docstring_options", None),
                )
