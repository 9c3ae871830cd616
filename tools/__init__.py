"""Infrastructure the template's tests build on, kept apart from the tests themselves."""
