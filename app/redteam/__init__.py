"""Red-team the running service: whole-image attacks on g, uploaded end to end.

Offline tooling like ``app.training``: nothing in serving imports it. See ``run.Redteam``.
Light on purpose (no torch): the CLI imports ``Variant`` from here at startup.
"""

from typing import Literal

Variant = Literal["pgd", "eot"]
VARIANTS: tuple[Variant, ...] = ("pgd", "eot")
# The unattacked image uploaded in the same formats: what g does to it without any attack.
Control = Literal["none"]
CONTROL: Control = "none"
