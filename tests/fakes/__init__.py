"""Faithful fakes of external services, for contract tests that must not reach the internet.

Each fake is written from the external service's own documentation and client library, never
from cvdeploy's code, so a test that passes against it shows cvdeploy agrees with the service,
not merely with itself. See README.md for what each fake does and what it assumes.
"""

from __future__ import annotations

__all__: list[str] = []
