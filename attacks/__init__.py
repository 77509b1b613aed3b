"""Built-in attacks (unlearnable-example generators), one file per method.

Installed as ``uebench.attacks``. Every class here that sets ``name = "..."`` is
registered under that name (``uebench.registry`` reads these files, importing a method only
when it is used); see CONTRIBUTING.md for adding one.
"""
