"""Tornado's private API is used in handlers/tornado_internals.py and nowhere else.

Each private name that module lists must still exist in the installed Tornado (a class attribute, or an
instance attribute assigned in one of the class's own __init__ methods or a method it calls), so that an
upgrade that removes or renames one fails here instead of breaking sockets or silently taking a slower
path. And no other module of the server may reach for a Tornado private name.
"""

from __future__ import annotations

import ast
import inspect
import pathlib
import re

import tornado.httpserver
import tornado.websocket

from handlers import tornado_internals

ROOT = pathlib.Path(__file__).resolve().parent.parent
APPLICATION_FILES = [
    ROOT / "server.py",
    *sorted((ROOT / "handlers").glob("*.py")),
    *sorted((ROOT / "services").rglob("*.py")),
]


def assigned_in_init(owner: type, name: str) -> bool:
    """Whether one of the class's own __init__ methods assigns the attribute, itself or through a method
    of the same class it calls (RequestHandler sets its headers in `clear`, which __init__ calls)."""
    for klass in owner.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or not hasattr(init, "__code__"):
            continue
        source = inspect.getsource(init)
        called = [klass.__dict__[m] for m in re.findall(r"\bself\.(\w+)\(", source) if m in klass.__dict__]
        for function in (init, *called):
            if re.search(rf"\bself\.{re.escape(name)}\s*(:[^=]*)?=", inspect.getsource(function)):
                return True
    return False


def test_every_private_name_the_quarantine_uses_exists_in_this_tornado():
    missing = [
        f"{owner.__name__}.{name}"
        for owner, name in tornado_internals.PRIVATE_NAMES
        if not hasattr(owner, name) and not assigned_in_init(owner, name)
    ]
    assert not missing, f"Tornado no longer has {missing}: update handlers/tornado_internals.py"


def test_the_list_names_every_private_attribute_the_quarantine_reads():
    source = inspect.getsource(tornado_internals)
    tree = ast.parse(source)
    listed = {name for _, name in tornado_internals.PRIVATE_NAMES}
    # Private names reached on objects that are not ours (self._lingering is our own attribute).
    own = {"_lingering", "_linger", "_lingering_tasks"}
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
    }
    assert used - own - {"_ProxyAdapter"} <= listed, used - own - listed


def test_no_other_module_touches_a_tornado_private_name():
    private = {name for _, name in tornado_internals.PRIVATE_NAMES if name.startswith("_")}
    private |= {"_ProxyAdapter", "_reason", "_write_buffer"}
    offenders = []
    for path in APPLICATION_FILES:
        if path.name == "tornado_internals.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in private:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert not offenders, offenders


def test_the_strict_close_protocol_overrides_methods_tornado_defines_and_calls():
    tornado_source = inspect.getsource(tornado.websocket)
    for name in ("_handle_message", "_abort"):
        defined_by = next(k for k in tornado.websocket.WebSocketProtocol13.__mro__ if name in k.__dict__)
        assert defined_by.__module__ == "tornado.websocket", name
        assert f"self.{name}(" in tornado_source, f"Tornado no longer calls {name}"
    assert "_ProxyAdapter(" in inspect.getsource(tornado.httpserver), "Tornado no longer wraps delegates for xheaders"
