"""The report: typed schema, view-model tables, figures and Markdown/HTML rendering."""
