"""MLE-Bench-style competitions: task format, built-in tasks, grading, medals, leaderboards."""
