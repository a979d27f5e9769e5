"""The results report: tables, figures and provenance from the workspace, as Markdown and self-contained HTML."""
