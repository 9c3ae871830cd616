"""HTTP routes that are not about authentication itself."""
