"""The watcher: poll KPS, diff with the stored snapshot, store events and outbox entries, deliver them."""
