"""Built-in attacks (unlearnable-example generators), one file per method.

Installed as ``uebench.attacks`` and registered through the ``uebench.attacks``
entry-point group in pyproject.toml, exactly as a third-party plugin would be.
"""
