"""Local HTTP servers that behave as the providers' APIs do (provider-apis.md §5)."""
