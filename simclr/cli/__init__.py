"""The Typer command line (thin wrappers over the library)."""
