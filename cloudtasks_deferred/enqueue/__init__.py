"""TODO enqueue."""

__all__: list[str] = []
