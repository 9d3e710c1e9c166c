// Placeholder: the dashboard script.
