"""(being written: see functional/__init__.py for what goes here)."""
__all__ = []
