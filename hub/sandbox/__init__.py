"""Worker pool: runs function code in separate, sandboxed, reusable processes."""
