"""Pure shapes and rules, no I/O: the API models, content filters, schedule maths,
requirement rules and shared wording."""
