"""The ``torpor`` command line (Typer + Rich)."""
