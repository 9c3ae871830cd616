"""The HTTP side: every route, and the dependencies that authenticate and limit them."""
