"""The course's own tooling: exercise checks, the classroom commands, the notebook runner and budgets, the
environment check, the executed edition, the diagrams and the README's generated tables."""
