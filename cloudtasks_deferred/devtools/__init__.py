"""TODO devtools."""

__all__: list[str] = []
