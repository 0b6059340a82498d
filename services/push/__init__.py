"""Push notifications for offline users: devices, the outbox, delivery."""
