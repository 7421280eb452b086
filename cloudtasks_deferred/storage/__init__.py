"""TODO storage."""

__all__: list[str] = []
