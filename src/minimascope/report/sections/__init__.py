"""One module per section of the report page: ``TITLE`` and ``build(ctx) -> dict`` for its template."""
