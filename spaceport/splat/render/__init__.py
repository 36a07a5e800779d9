"""One render signature, two backends (filled in by the render work; see DESIGN.md)."""
