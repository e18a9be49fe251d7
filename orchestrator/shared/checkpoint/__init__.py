"""A checkpoint's files written, verified and chosen: the store, the asynchronous saver, when to save, where to resume."""
