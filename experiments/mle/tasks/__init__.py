"""Built-in competitions, one MLE-Bench-style directory each (ids use hyphens, like MLE-Bench)."""
