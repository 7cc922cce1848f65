"""Presentation: text tables, figures (alone owns matplotlib) and HTML/PDF reports (alone owns jinja2)."""
