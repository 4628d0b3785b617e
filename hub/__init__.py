"""Trigger Hub: Lambda-style functions run by S3, MongoDB and Kafka events."""
