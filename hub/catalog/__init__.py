"""What is registered: functions and their versions, code, dependencies, triggers, and the
config watch that keeps every instance's view current."""
