"""The package's layers, checked on the code (docs/ARCHITECTURE.md): what each layer may import,
and no import cycle that only works by accident of import order (each module imports alone)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "proxy"
MODULES = sorted(
    ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    for path in PACKAGE.rglob("*.py")
    if path.name != "__main__.py"  # runs the command line
)


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (functions and TYPE_CHECKING blocks too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names if node.module == "proxy")
    return names


def test_the_format_is_pure() -> None:
    """``proxy.format`` (bytes at rest) needs the standard library and cryptography only: no
    asyncio, no HTTP, nothing else of the proxy."""
    allowed_third_party = {"cryptography"}
    for path in (PACKAGE / "format").glob("*.py"):
        for name in imported(path):
            top = name.split(".")[0]
            if top == "proxy":
                assert name.startswith("proxy.format"), f"{path.name} imports {name}"
            else:
                assert top in allowed_third_party or top in sys.stdlib_module_names, f"{path.name} imports {name}"
                assert top != "asyncio", f"{path.name} imports asyncio"


#: What each layer must not import (module prefixes): a layer sees only those below it, in the
#: order cli > daemon | tools > objects > frontend (s3) | upstream > format. Leaves (config, logs,
#: metrics, cache, policy, conditions, manifest, keyfiles) sit beside them.
FORBIDDEN = {
    "proxy.s3": (
        "proxy.upstream",
        "proxy.objects",
        "proxy.daemon",
        "proxy.tools",
        "proxy.cli",
        "proxy.format",
        "proxy.config",
    ),
    "proxy.upstream.http": ("proxy.",),  # the direct HTTP stack: nothing of the proxy
    "proxy.upstream": ("proxy.objects", "proxy.daemon", "proxy.tools", "proxy.cli", "proxy.format"),
    # The code for each kind of key is handed requests by proxy.objects.service and never calls
    # back into it; passthrough knows nothing of the format or of the other kinds.
    "proxy.objects.passthrough": ("proxy.objects.", "proxy.format"),
    "proxy.objects.views": ("proxy.objects.service", "proxy.objects.encrypted", "proxy.objects.manifests"),
    "proxy.objects.encrypted": ("proxy.objects.service", "proxy.objects.manifests", "proxy.objects.multipart"),
    "proxy.objects.manifests": ("proxy.objects.service", "proxy.objects.multipart"),
    "proxy.objects.multipart": ("proxy.objects.service", "proxy.objects.encrypted", "proxy.objects.manifests"),
    "proxy.objects": ("proxy.daemon", "proxy.tools", "proxy.cli"),
    # The key service (KMS) beside the upstream: format keys and S3 errors, nothing above it.
    "proxy.kms": ("proxy.objects", "proxy.daemon", "proxy.tools", "proxy.cli", "proxy.upstream"),
    "proxy.daemon": ("proxy.tools", "proxy.cli"),
    "proxy.tools": ("proxy.daemon.server", "proxy.cli"),
}


def layers_of(module: str) -> list[str]:
    """The layers ``module`` belongs to (``proxy.objects.views`` is in ``proxy.objects`` too)."""
    return [layer for layer in FORBIDDEN if module == layer or module.startswith(layer + ".")]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_downwards(layer: str) -> None:
    """Nothing imports what sits above it; nothing but ``proxy.__main__`` imports the command line."""
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        if layer not in layers_of(module):
            continue
        for name in imported(path):
            bad = [
                prefix
                for prefix in FORBIDDEN[layer]
                if name.startswith(prefix) and not (name == layer or name.startswith(layer + "."))
            ]
            assert not bad, f"{module} imports {name}"


def test_only_main_imports_the_command_line() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.name not in ("__main__.py", "cli.py"):
            assert not any(name == "proxy.cli" for name in imported(path)), f"{path} imports proxy.cli"


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone(module: str) -> None:
    """A fresh interpreter imports ``module`` first: a cycle that depends on another module having
    been imported before fails here."""
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, cwd=PACKAGE.parent
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_front_end_does_not_load_the_upstream() -> None:
    """The S3 front end (parsing, authentication, dispatch) runs without botocore or the
    upstream: a change to the bucket's side cannot reach it."""
    code = (
        "import sys, proxy.s3.frontend; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('botocore', 'aiobotocore') "
        "or m in ('proxy.upstream', 'proxy.objects')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, check=True
    )
    assert result.stdout.strip() == "[]"


def test_services_are_composed_not_inherited() -> None:
    """The service hands each request to the code for its key's kind: no class of
    ``proxy.objects`` extends another one (an inheritance chain hid which code served a key)."""
    import ast

    for path in (PACKAGE / "objects").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(base) for base in node.bases]
                assert all(base in ("Exception", "S3Error", "Protocol") for base in bases), (
                    f"{path.name}: {node.name}({', '.join(bases)})"
                )


def test_only_the_upstream_chooses_between_its_paths() -> None:
    """Callers ask ``Upstream`` for an operation (``head``, ``read_range``, ``open``,
    ``put``, ``list_page``...); whether it goes the direct way or through botocore is
    decided inside ``proxy.upstream`` only."""
    import re

    for path in PACKAGE.rglob("*.py"):
        if "upstream" in path.relative_to(PACKAGE).parts:
            continue
        found = re.findall(r"\.(direct_[a-z]+|get_records|fast_[a-z]+)\(", path.read_text())
        assert not found, f"{path.relative_to(PACKAGE)} calls {found}"


#: The operations still called by name (``Upstream.call``): listing pages and bucket-level calls,
#: whose S3-shaped replies are re-encoded for the client as they are (docs/ARCHITECTURE.md).
UNTYPED_OPERATIONS = {
    "list_buckets",
    "head_bucket",
    "get_bucket_location",
    "create_bucket",
    "delete_bucket",
    "list_objects_v2",
    "list_parts",
    "list_multipart_uploads",
    "delete_objects",
}
# The sub-resource operations (proxy.s3.routing.SUBRESOURCES), forwarded by botocore's model
# (proxy.upstream.subresources): configuration and descriptions, no object data.
UNTYPED_OPERATIONS |= {
    "get_bucket_versioning",
    "put_bucket_versioning",
    "get_bucket_policy",
    "put_bucket_policy",
    "delete_bucket_policy",
    "get_bucket_policy_status",
    "get_bucket_lifecycle_configuration",
    "put_bucket_lifecycle_configuration",
    "delete_bucket_lifecycle",
    "get_bucket_tagging",
    "put_bucket_tagging",
    "delete_bucket_tagging",
    "get_object_tagging",
    "put_object_tagging",
    "delete_object_tagging",
    "get_bucket_acl",
    "put_bucket_acl",
    "get_object_acl",
    "put_object_acl",
    "get_bucket_ownership_controls",
    "put_bucket_ownership_controls",
    "delete_bucket_ownership_controls",
    "get_object_lock_configuration",
    "put_object_lock_configuration",
    "get_object_legal_hold",
    "put_object_legal_hold",
    "get_object_retention",
    "put_object_retention",
    "get_bucket_encryption",
    "put_bucket_encryption",
    "delete_bucket_encryption",
    "get_public_access_block",
    "put_public_access_block",
    "delete_public_access_block",
    "list_object_versions",
    "get_object_attributes",
}


def test_sub_resource_operations_are_the_documented_untyped_ones() -> None:
    """What ``PassthroughService.subresource`` calls by a computed name is listed above, and only
    operations without object data are: nothing that writes or reads a body goes that way."""
    from proxy.s3.routing import SUBRESOURCE_OPERATIONS
    from proxy.upstream.subresources import botocore_name

    called = {botocore_name(operation) for operation in SUBRESOURCE_OPERATIONS}
    assert called <= UNTYPED_OPERATIONS, called - UNTYPED_OPERATIONS
    assert not {"get_object", "put_object", "upload_part", "copy_object"} & called


def test_object_operations_go_through_typed_upstream_calls() -> None:
    """Every object operation (HEAD, GET, PUT, multipart steps, copies, deletes) has a typed
    ``Upstream`` method with its own result type; only the listings and bucket-level calls above
    are made by name."""
    import re

    for path in PACKAGE.rglob("*.py"):
        if "upstream" in path.relative_to(PACKAGE).parts:
            continue
        named = set(re.findall(r"\.call\(\s*\"([a-z_0-9]+)\"", path.read_text()))
        assert named <= UNTYPED_OPERATIONS, f"{path.relative_to(PACKAGE)} calls {named - UNTYPED_OPERATIONS} by name"
