"""TODO receive."""

__all__: list[str] = []
