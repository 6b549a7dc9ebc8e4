"""A griffe extension for mkdocstrings: a class docstring assigned after the class, `Cls.__doc__ = r\"\"\"...\"\"\"`.

torch.optim assigns its optimizers' docstrings that way (the algorithm box is written once, after the class), and so
does `ivon_lora.optim.ivon.IVON`. griffe reads code without importing it and sees only docstrings in place; this
extension reads such module-level assignments from the module's syntax tree and gives the class its docstring.
"""

from __future__ import annotations

import ast

import griffe


class AssignedDocstrings(griffe.Extension):
    def on_module_members(self, *, node, mod, **kwargs) -> None:
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
                    ast.get_docstring(ast.Module(body=[ast.Expr(statement.value)], type_ignores=[])) or "",
                    lineno=statement.lineno,
                    endlineno=statement.end_lineno,
                    parent=owner,
                )
