"""Built-in defenses (countermeasures), one file per method.

Installed as ``uebench.defenses`` and registered through the ``uebench.defenses``
entry-point group in pyproject.toml, exactly as a third-party plugin would be.
"""
